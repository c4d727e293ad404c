//! A pipeline's stages as a DAG picture: inline SVG, one box per stage coloured by its status,
//! an arrow from each stage to every stage that needs it. Stages sit in columns by depth (the
//! longest chain of needs before them), in the order given (a topological order) within a
//! column.

use std::collections::HashMap;
use std::fmt::Write;

use crate::report::svg::escape;

/// One stage to draw.
#[derive(Debug, Clone)]
pub struct Node<'a> {
    pub id: &'a str,
    /// A status or plan word (`ran`, `cached`, `failed`, `run`, `waiting`, ...): the box's
    /// class, which the page's style colours.
    pub status: &'a str,
    pub needs: &'a [String],
}

const BOX_HEIGHT: f64 = 26.0;
const ROW_GAP: f64 = 10.0;
const COLUMN_GAP: f64 = 48.0;
const CHAR_WIDTH: f64 = 7.2;
const MARGIN: f64 = 6.0;

/// The style the picture's classes need (the statuses' colours), for the page's `<style>`.
pub const STYLE: &str = "svg.dag{display:block;margin:12px 0}svg.dag .node rect{fill:#f6f8fa;stroke:#8c959f;rx:5}svg.dag .node text{font-size:12px;fill:#1f2328}svg.dag path{fill:none;stroke:#8c959f;stroke-width:1.2}svg.dag .ran rect,svg.dag .run rect{fill:#dafbe1;stroke:#2da44e}svg.dag .cached rect{fill:#f6f8fa;stroke:#afb8c1}svg.dag .failed rect{fill:#ffebe9;stroke:#cf222e}svg.dag .running rect{fill:#fff8c5;stroke:#bf8700}svg.dag .downloaded rect,svg.dag .remote rect{fill:#ddf4ff;stroke:#0969da}svg.dag .reused rect,svg.dag .reuse rect{fill:#fbefff;stroke:#8250df}svg.dag .skipped rect,svg.dag .skip rect,svg.dag .waiting rect{fill:#fff;stroke:#d0d7de;stroke-dasharray:3 2}";

/// The picture, or nothing for no stages. Needs naming a stage not in `nodes` are ignored.
/// Each box is a `<g id="node-<stage>" class="node <status>">`, so a page's script can recolour
/// it.
pub fn dag_svg(nodes: &[Node<'_>]) -> String {
    if nodes.is_empty() {
        return String::new();
    }
    let index: HashMap<&str, usize> = nodes
        .iter()
        .enumerate()
        .map(|(position, node)| (node.id, position))
        .collect();
    // Depth: one more than the deepest need (needs come first in a topological order; a need
    // later in the list, which a malformed record could hold, counts as depth 0).
    let mut depth = vec![0usize; nodes.len()];
    for (position, node) in nodes.iter().enumerate() {
        depth[position] = node
            .needs
            .iter()
            .filter_map(|need| index.get(need.as_str()))
            .filter(|&&need| need < position)
            .map(|&need| depth[need] + 1)
            .max()
            .unwrap_or(0);
    }
    let columns = depth.iter().max().map_or(1, |deepest| deepest + 1);
    let mut width_of = vec![0.0f64; columns];
    let mut row = vec![0usize; nodes.len()];
    let mut rows = vec![0usize; columns];
    for (position, node) in nodes.iter().enumerate() {
        let column = depth[position];
        let width = (node.id.chars().count() as f64 * CHAR_WIDTH + 20.0).clamp(60.0, 260.0);
        width_of[column] = width_of[column].max(width);
        row[position] = rows[column];
        rows[column] += 1;
    }
    let mut left = vec![MARGIN; columns];
    for column in 1..columns {
        left[column] = left[column - 1] + width_of[column - 1] + COLUMN_GAP;
    }
    let tallest = rows.iter().copied().max().unwrap_or(1);
    let total_width = left[columns - 1] + width_of[columns - 1] + MARGIN;
    let total_height = MARGIN * 2.0 + tallest as f64 * (BOX_HEIGHT + ROW_GAP) - ROW_GAP;
    let top = |position: usize| MARGIN + row[position] as f64 * (BOX_HEIGHT + ROW_GAP);

    let mut svg = format!(
        "<svg class=\"dag\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{total_width:.0}\" height=\"{total_height:.0}\" viewBox=\"0 0 {total_width:.0} {total_height:.0}\" role=\"img\" aria-label=\"the stages and what each needs\">\
         <defs><marker id=\"arrow\" viewBox=\"0 0 8 8\" refX=\"8\" refY=\"4\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto\"><path d=\"M0,0 L8,4 L0,8 z\" style=\"fill:#8c959f;stroke:none\"/></marker></defs>"
    );
    for (position, node) in nodes.iter().enumerate() {
        for need in node.needs {
            let Some(&from) = index.get(need.as_str()).filter(|&&from| from < position) else {
                continue;
            };
            let x1 = left[depth[from]] + width_of[depth[from]];
            let y1 = top(from) + BOX_HEIGHT / 2.0;
            let x2 = left[depth[position]];
            let y2 = top(position) + BOX_HEIGHT / 2.0;
            let bend = (x2 - x1) / 2.0;
            let _ = write!(
                svg,
                "<path class=\"edge\" data-from=\"{}\" data-to=\"{}\" d=\"M{x1:.1},{y1:.1} C{:.1},{y1:.1} {:.1},{y2:.1} {x2:.1},{y2:.1}\" marker-end=\"url(#arrow)\"/>",
                escape(need),
                escape(node.id),
                x1 + bend,
                x2 - bend,
            );
        }
    }
    for (position, node) in nodes.iter().enumerate() {
        let (x, y) = (left[depth[position]], top(position));
        let _ = write!(
            svg,
            "<g id=\"node-{id}\" class=\"node {status}\"><title>{id}: {status}</title><rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{BOX_HEIGHT}\"/><text x=\"{:.1}\" y=\"{:.1}\">{id}</text></g>",
            width_of[depth[position]],
            x + 10.0,
            y + BOX_HEIGHT / 2.0 + 4.0,
            id = escape(node.id),
            status = escape(node.status),
        );
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn needs(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn stages_sit_in_columns_by_depth_with_an_arrow_per_need() {
        let (none, a, ab) = (needs(&[]), needs(&["a"]), needs(&["a", "b"]));
        let nodes = [
            Node {
                id: "a",
                status: "ran",
                needs: &none,
            },
            Node {
                id: "b",
                status: "cached",
                needs: &a,
            },
            Node {
                id: "c",
                status: "failed",
                needs: &ab,
            },
            Node {
                id: "d",
                status: "skipped",
                needs: &a,
            },
        ];
        let svg = dag_svg(&nodes);
        assert_eq!(svg.matches("<path class=\"edge\"").count(), 4, "{svg}");
        assert!(
            svg.contains("<g id=\"node-c\" class=\"node failed\">"),
            "{svg}"
        );
        // c needs b (depth 1), so it is in the third column; b and d share the second.
        let x_of = |id: &str| -> f64 {
            let start = svg.find(&format!("id=\"node-{id}\"")).unwrap();
            let rest = &svg[start..];
            let x = rest.find("x=\"").unwrap() + 3;
            rest[x..x + rest[x..].find('"').unwrap()].parse().unwrap()
        };
        assert!(x_of("a") < x_of("b"));
        assert_eq!(x_of("b"), x_of("d"));
        assert!(x_of("b") < x_of("c"));
        assert_eq!(dag_svg(&[]), "");
    }

    #[test]
    fn names_are_escaped_and_unknown_needs_ignored() {
        let odd = needs(&["gone"]);
        let svg = dag_svg(&[Node {
            id: "<b>",
            status: "ran",
            needs: &odd,
        }]);
        assert!(svg.contains("&lt;b&gt;") && !svg.contains("<b>"), "{svg}");
        assert!(!svg.contains("class=\"edge\""));
    }
}
