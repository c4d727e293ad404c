//! The stage graph: edges from each stage's inputs to it, a stable topological order, whole
//! cycle paths for errors, and the selection flags (`--start-from`, `--stop-at`, `--only`).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use petgraph::Direction;
use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::{Bfs, Reversed};

/// A DAG over stage indices `0..n`, with an edge `input -> stage` for every `needs` entry.
#[derive(Debug, Clone)]
pub struct Dag {
    graph: DiGraph<usize, ()>,
    order: Vec<usize>,
}

impl Dag {
    /// Builds the graph, or returns one cycle as a path that starts and ends on the same stage.
    pub fn build(stage_count: usize, edges: &[(usize, usize)]) -> Result<Self, Vec<usize>> {
        let mut graph = DiGraph::with_capacity(stage_count, edges.len());
        for index in 0..stage_count {
            graph.add_node(index);
        }
        for &(input, stage) in edges {
            graph.update_edge(NodeIndex::new(input), NodeIndex::new(stage), ());
        }
        if let Some(cycle) = find_cycle(&graph) {
            return Err(cycle);
        }
        let order = stable_topological_order(&graph);
        Ok(Self { graph, order })
    }

    /// Stages in dependency order; among independent stages, file order.
    pub fn topological_order(&self) -> &[usize] {
        &self.order
    }

    pub fn len(&self) -> usize {
        self.graph.node_count()
    }

    pub fn is_empty(&self) -> bool {
        self.graph.node_count() == 0
    }

    /// Direct inputs of `stage`, in ascending index order.
    pub fn inputs(&self, stage: usize) -> Vec<usize> {
        let mut inputs: Vec<usize> = self
            .graph
            .neighbors_directed(NodeIndex::new(stage), Direction::Incoming)
            .map(NodeIndex::index)
            .collect();
        inputs.sort_unstable();
        inputs
    }

    /// `stage` and everything downstream of it.
    pub fn descendants(&self, stage: usize) -> Vec<bool> {
        let mut reached = vec![false; self.len()];
        let mut bfs = Bfs::new(&self.graph, NodeIndex::new(stage));
        while let Some(node) = bfs.next(&self.graph) {
            reached[node.index()] = true;
        }
        reached
    }

    /// `stage` and everything upstream of it.
    pub fn ancestors(&self, stage: usize) -> Vec<bool> {
        let reversed = Reversed(&self.graph);
        let mut reached = vec![false; self.len()];
        let mut bfs = Bfs::new(reversed, NodeIndex::new(stage));
        while let Some(node) = bfs.next(reversed) {
            reached[node.index()] = true;
        }
        reached
    }

    /// The stages a selection executes or checks. Flags intersect: `--start-from a --stop-at b`
    /// is what lies downstream of `a` and upstream of `b`.
    pub fn select(&self, selection: &Selection) -> Vec<bool> {
        let mut selected = vec![true; self.len()];
        let mut intersect = |mask: Vec<bool>| {
            for (keep, other) in selected.iter_mut().zip(mask) {
                *keep &= other;
            }
        };
        // The stages any of `stages` reaches (each a mask from `reach`).
        let union = |stages: &[usize], reach: &dyn Fn(usize) -> Vec<bool>| {
            let mut out = vec![false; self.len()];
            for &stage in stages {
                for (keep, other) in out.iter_mut().zip(reach(stage)) {
                    *keep |= other;
                }
            }
            out
        };
        if !selection.start_from.is_empty() {
            intersect(union(&selection.start_from, &|stage| {
                self.descendants(stage)
            }));
        }
        if !selection.stop_at.is_empty() {
            intersect(union(&selection.stop_at, &|stage| self.ancestors(stage)));
        }
        if !selection.only.is_empty() {
            let mut mask = vec![false; self.len()];
            for &stage in &selection.only {
                mask[stage] = true;
            }
            intersect(mask);
        }
        selected
    }
}

/// Which stages a run considers, by stage index.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// `--start-from`: these stages (all members a pattern matched) and what they invalidate.
    pub start_from: Vec<usize>,
    /// `--stop-at`: these stages and what they need.
    pub stop_at: Vec<usize>,
    pub only: Vec<usize>,
    pub force: bool,
}

/// Kahn's algorithm with a min-heap, so the order is deterministic and follows the file.
fn stable_topological_order(graph: &DiGraph<usize, ()>) -> Vec<usize> {
    let mut remaining_inputs: Vec<usize> = graph
        .node_indices()
        .map(|node| graph.neighbors_directed(node, Direction::Incoming).count())
        .collect();
    let mut ready: BinaryHeap<Reverse<usize>> = remaining_inputs
        .iter()
        .enumerate()
        .filter(|(_, count)| **count == 0)
        .map(|(index, _)| Reverse(index))
        .collect();
    let mut order = Vec::with_capacity(graph.node_count());
    while let Some(Reverse(index)) = ready.pop() {
        order.push(index);
        for next in graph.neighbors_directed(NodeIndex::new(index), Direction::Outgoing) {
            remaining_inputs[next.index()] -= 1;
            if remaining_inputs[next.index()] == 0 {
                ready.push(Reverse(next.index()));
            }
        }
    }
    order
}

/// One cycle, as `[a, b, ..., a]` following edge direction, starting at its lowest index.
/// petgraph's `toposort` names a single node; users need the whole loop to fix it.
fn find_cycle(graph: &DiGraph<usize, ()>) -> Option<Vec<usize>> {
    let mut components = tarjan_scc(graph);
    components.sort_by_key(|component| component.iter().map(|node| node.index()).min());
    for component in components {
        let start = *component.iter().min_by_key(|node| node.index())?;
        if component.len() == 1 {
            if graph.contains_edge(start, start) {
                return Some(vec![start.index(), start.index()]);
            }
            continue;
        }
        // Breadth-first search inside the component for the shortest way back to `start`.
        let inside = |node: NodeIndex| component.contains(&node);
        let mut previous: Vec<Option<NodeIndex>> = vec![None; graph.node_count()];
        let mut queue = std::collections::VecDeque::from([start]);
        let mut seen = vec![false; graph.node_count()];
        seen[start.index()] = true;
        while let Some(node) = queue.pop_front() {
            let mut successors: Vec<NodeIndex> =
                graph.neighbors(node).filter(|n| inside(*n)).collect();
            successors.sort_by_key(|node| node.index());
            for next in successors {
                if next == start {
                    // Walk back from `node` to `start`, then read the loop forwards.
                    let mut walk = Vec::new();
                    let mut current = node;
                    while current != start {
                        walk.push(current.index());
                        current = previous[current.index()]?;
                    }
                    walk.reverse();
                    let mut path = vec![start.index()];
                    path.extend(walk);
                    path.push(start.index());
                    return Some(path);
                }
                if !seen[next.index()] {
                    seen[next.index()] = true;
                    previous[next.index()] = Some(node);
                    queue.push_back(next);
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dag(count: usize, edges: &[(usize, usize)]) -> Dag {
        Dag::build(count, edges).expect("acyclic")
    }

    #[test]
    fn orders_by_dependency_then_file_order() {
        // 0 -> 2, 1 -> 2, 3 independent, 2 -> 4
        let graph = dag(5, &[(0, 2), (1, 2), (2, 4)]);
        assert_eq!(graph.topological_order(), &[0, 1, 2, 3, 4]);
        let graph = dag(3, &[(2, 0), (1, 0)]);
        assert_eq!(graph.topological_order(), &[1, 2, 0]);
    }

    #[test]
    fn reports_the_whole_cycle() {
        // 0 -> 1 -> 2 -> 0, plus 3 hanging off 2
        let cycle = Dag::build(4, &[(0, 1), (1, 2), (2, 0), (2, 3)]).unwrap_err();
        assert_eq!(cycle, vec![0, 1, 2, 0]);
        let cycle = Dag::build(2, &[(1, 1)]).unwrap_err();
        assert_eq!(cycle, vec![1, 1]);
        let cycle = Dag::build(3, &[(2, 1), (1, 2)]).unwrap_err();
        assert_eq!(cycle, vec![1, 2, 1]);
    }

    #[test]
    fn selection_flags_intersect() {
        // chain 0 -> 1 -> 2 -> 3 and a side branch 1 -> 4
        let graph = dag(5, &[(0, 1), (1, 2), (2, 3), (1, 4)]);
        let select = |selection: Selection| graph.select(&selection);
        assert_eq!(
            select(Selection {
                start_from: vec![1],
                ..Default::default()
            }),
            vec![false, true, true, true, true]
        );
        assert_eq!(
            select(Selection {
                stop_at: vec![2],
                ..Default::default()
            }),
            vec![true, true, true, false, false]
        );
        assert_eq!(
            select(Selection {
                start_from: vec![1],
                stop_at: vec![2],
                ..Default::default()
            }),
            vec![false, true, true, false, false]
        );
        assert_eq!(
            select(Selection {
                only: vec![3, 0],
                ..Default::default()
            }),
            vec![true, false, false, true, false]
        );
    }

    /// Property test over pseudo-random DAGs: descendants and ancestors are closed and mirror
    /// each other, and the order puts every input before its consumer.
    #[test]
    fn selection_properties_hold_on_random_dags() {
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..200 {
            let count = (next() % 12 + 1) as usize;
            let mut edges = Vec::new();
            for stage in 1..count {
                for input in 0..stage {
                    if next() % 4 == 0 {
                        edges.push((input, stage));
                    }
                }
            }
            let graph = dag(count, &edges);
            let order = graph.topological_order();
            let position = |stage: usize| order.iter().position(|&s| s == stage).unwrap();
            for &(input, stage) in &edges {
                assert!(position(input) < position(stage));
            }
            for stage in 0..count {
                let down = graph.descendants(stage);
                let up = graph.ancestors(stage);
                assert!(down[stage] && up[stage]);
                for other in 0..count {
                    assert_eq!(down[other], graph.ancestors(other)[stage]);
                    if down[other] {
                        for &(input, consumer) in &edges {
                            if input == other {
                                assert!(down[consumer], "descendants are closed downstream");
                            }
                        }
                    }
                    if up[other] && other != stage {
                        assert!(!down[other], "no stage is both above and below another");
                    }
                }
            }
        }
    }
}
