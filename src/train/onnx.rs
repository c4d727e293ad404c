//! `model.onnx`: every model kind as one ONNX graph that runs anywhere ONNX Runtime does.
//! Inputs are named by feature (one `float[N, 1]` each, so a caller binds columns by name);
//! they are joined, standardised with the training scaler (`(x - mean) / scale`, in float as
//! asterflow computes it), sent through the model, and the output `probabilities`
//! (`float[N, classes]`) holds the class probabilities in the model's `classes` order.
//!
//! Networks are `MatMul`/`Add`/`Relu`/`Softmax` (opset 13); tree ensembles are `ai.onnx.ml`
//! `TreeEnsembleClassifier` (version 3), with `BRANCH_LEQ` nodes as asterflow's trees route
//! (`x <= threshold` goes left, NaN right), boosted scores through `SOFTMAX` from the
//! starting scores, a forest's leaf distributions averaged. The protobuf is written here
//! (a few message types of `onnx.proto`), so no protobuf crate is needed.

use super::network::Network;
use super::trees::{Ensemble, EnsembleKind};
use super::{Model, Scaler};

/// Protobuf wire encoding: tags, varints, length-delimited fields.
#[derive(Default)]
struct Message(Vec<u8>);

impl Message {
    fn varint(&mut self, mut value: u64) {
        loop {
            let byte = (value & 0x7f) as u8;
            value >>= 7;
            if value == 0 {
                self.0.push(byte);
                return;
            }
            self.0.push(byte | 0x80);
        }
    }

    fn tag(&mut self, field: u32, wire: u8) {
        self.varint(u64::from(field) << 3 | u64::from(wire));
    }

    fn int(&mut self, field: u32, value: i64) -> &mut Self {
        self.tag(field, 0);
        self.varint(value as u64);
        self
    }

    fn bytes(&mut self, field: u32, bytes: &[u8]) -> &mut Self {
        self.tag(field, 2);
        self.varint(bytes.len() as u64);
        self.0.extend_from_slice(bytes);
        self
    }

    fn text(&mut self, field: u32, text: &str) -> &mut Self {
        self.bytes(field, text.as_bytes())
    }

    fn message(&mut self, field: u32, message: &Message) -> &mut Self {
        self.bytes(field, &message.0)
    }

    fn float(&mut self, field: u32, value: f32) -> &mut Self {
        self.tag(field, 5);
        self.0.extend_from_slice(&value.to_le_bytes());
        self
    }
}

// onnx.proto field numbers.
const ATTRIBUTE_INT: i64 = 2;
const ATTRIBUTE_STRING: i64 = 3;
const ATTRIBUTE_FLOATS: i64 = 6;
const ATTRIBUTE_INTS: i64 = 7;
const ATTRIBUTE_STRINGS: i64 = 8;
const TENSOR_FLOAT: i64 = 1;

/// An attribute of a node.
enum Attribute<'a> {
    Int(i64),
    Text(&'a str),
    Ints(Vec<i64>),
    Floats(Vec<f32>),
    Texts(Vec<&'a str>),
}

fn attribute(name: &str, value: &Attribute<'_>) -> Message {
    let mut message = Message::default();
    message.text(1, name);
    match value {
        Attribute::Int(value) => {
            message.int(3, *value).int(20, ATTRIBUTE_INT);
        }
        Attribute::Text(value) => {
            message.text(4, value).int(20, ATTRIBUTE_STRING);
        }
        Attribute::Floats(values) => {
            for value in values {
                message.float(7, *value);
            }
            message.int(20, ATTRIBUTE_FLOATS);
        }
        Attribute::Ints(values) => {
            for value in values {
                message.int(8, *value);
            }
            message.int(20, ATTRIBUTE_INTS);
        }
        Attribute::Texts(values) => {
            for value in values {
                message.text(9, value);
            }
            message.int(20, ATTRIBUTE_STRINGS);
        }
    }
    message
}

/// A graph under construction.
#[derive(Default)]
struct Graph {
    nodes: Vec<Message>,
    initializers: Vec<Message>,
}

impl Graph {
    fn node(
        &mut self,
        op: &str,
        domain: &str,
        inputs: &[&str],
        outputs: &[&str],
        attributes: &[(&str, Attribute<'_>)],
    ) {
        let mut node = Message::default();
        for input in inputs {
            node.text(1, input);
        }
        for output in outputs {
            node.text(2, output);
        }
        node.text(3, &format!("{op}_{}", self.nodes.len()));
        node.text(4, op);
        for (name, value) in attributes {
            node.message(5, &attribute(name, value));
        }
        if !domain.is_empty() {
            node.text(7, domain);
        }
        self.nodes.push(node);
    }

    /// A float initializer of `dims`.
    fn constant(&mut self, name: &str, dims: &[usize], values: &[f32]) {
        let mut tensor = Message::default();
        for dim in dims {
            tensor.int(1, *dim as i64);
        }
        tensor.int(2, TENSOR_FLOAT);
        tensor.text(8, name);
        let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        tensor.bytes(9, &raw);
        self.initializers.push(tensor);
    }
}

/// `float[N, width]` named `name`.
fn value_info(name: &str, width: usize) -> Message {
    let mut batch = Message::default();
    batch.text(2, "N");
    let mut columns = Message::default();
    columns.int(1, width as i64);
    let mut shape = Message::default();
    shape.message(1, &batch).message(1, &columns);
    let mut tensor = Message::default();
    tensor.int(1, TENSOR_FLOAT).message(2, &shape);
    let mut kind = Message::default();
    kind.message(1, &tensor);
    let mut info = Message::default();
    info.text(1, name).message(2, &kind);
    info
}

/// Input names: the feature names, made unique and non-empty (ONNX names are strings; any
/// text is allowed, so a feature keeps its own name unless two collide).
fn input_names(features: &[String]) -> Vec<String> {
    let mut names: Vec<String> = Vec::with_capacity(features.len());
    for (index, feature) in features.iter().enumerate() {
        let mut name = if feature.is_empty() {
            format!("feature_{index}")
        } else {
            feature.clone()
        };
        while names.contains(&name) || name == "probabilities" {
            name.push('_');
        }
        names.push(name);
    }
    names
}

/// The whole model as ONNX bytes.
pub fn export(model: &Model, scaler: &Scaler, features: &[String], classes: usize) -> Vec<u8> {
    let mut graph = Graph::default();
    let names = input_names(features);
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let dim = features.len();
    graph.node(
        "Concat",
        "",
        &name_refs,
        &["x"],
        &[("axis", Attribute::Int(1))],
    );
    let mean: Vec<f32> = scaler.mean.iter().map(|&v| v as f32).collect();
    let scale: Vec<f32> = scaler.scale.iter().map(|&v| v as f32).collect();
    graph.constant("mean", &[dim], &mean);
    graph.constant("scale", &[dim], &scale);
    graph.node("Sub", "", &["x", "mean"], &["centred"], &[]);
    graph.node("Div", "", &["centred", "scale"], &["z"], &[]);
    match model {
        Model::Network(network) => network_nodes(&mut graph, network),
        Model::Trees(ensemble) => tree_nodes(&mut graph, ensemble),
    }
    let mut body = Message::default();
    for node in &graph.nodes {
        body.message(1, node);
    }
    body.text(2, "asterflow");
    for tensor in &graph.initializers {
        body.message(5, tensor);
    }
    for name in &names {
        body.message(11, &value_info(name, 1));
    }
    body.message(12, &value_info("probabilities", classes));

    let mut model_proto = Message::default();
    model_proto.int(1, 8); // IR version 8
    model_proto.text(2, "asterflow");
    model_proto.text(3, env!("CARGO_PKG_VERSION"));
    model_proto.message(7, &body);
    for (domain, version) in [("", 13), ("ai.onnx.ml", 3)] {
        let mut opset = Message::default();
        opset.text(1, domain).int(2, version);
        model_proto.message(8, &opset);
    }
    model_proto.0
}

fn network_nodes(graph: &mut Graph, network: &Network) {
    let layout = network.layout();
    let params = &network.params;
    let (inputs, hidden, classes) = (network.inputs, network.hidden, network.classes);
    let last = if hidden > 0 {
        graph.constant("w1", &[inputs, hidden], &params[layout.w1.clone()]);
        graph.constant("b1", &[hidden], &params[layout.b1.clone()]);
        graph.node("MatMul", "", &["z", "w1"], &["h_linear"], &[]);
        graph.node("Add", "", &["h_linear", "b1"], &["h_biased"], &[]);
        graph.node("Relu", "", &["h_biased"], &["h"], &[]);
        "h"
    } else {
        "z"
    };
    graph.constant("w2", &[layout.fan_in, classes], &params[layout.w2.clone()]);
    graph.constant("b2", &[classes], &params[layout.b2.clone()]);
    graph.node("MatMul", "", &[last, "w2"], &["logits_linear"], &[]);
    graph.node("Add", "", &["logits_linear", "b2"], &["logits"], &[]);
    graph.node(
        "Softmax",
        "",
        &["logits"],
        &["probabilities"],
        &[("axis", Attribute::Int(1))],
    );
}

fn tree_nodes(graph: &mut Graph, ensemble: &Ensemble) {
    let k = ensemble.classes;
    let trees = ensemble.trees.len().max(1);
    let (mut tree_ids, mut node_ids, mut feature_ids, mut modes) = (vec![], vec![], vec![], vec![]);
    let (mut values, mut true_ids, mut false_ids, mut missing) = (vec![], vec![], vec![], vec![]);
    let (mut class_trees, mut class_nodes, mut class_ids, mut class_weights) =
        (vec![], vec![], vec![], vec![]);
    for (index, tree) in ensemble.trees.iter().enumerate() {
        for node in 0..tree.nodes() {
            tree_ids.push(index as i64);
            node_ids.push(node as i64);
            missing.push(0);
            let feature = tree.feature[node];
            if feature >= 0 {
                feature_ids.push(i64::from(feature));
                modes.push("BRANCH_LEQ");
                values.push(tree.threshold[node]);
                true_ids.push(i64::from(tree.left[node]));
                false_ids.push(i64::from(tree.right[node]));
                continue;
            }
            feature_ids.push(0);
            modes.push("LEAF");
            values.push(0.0);
            true_ids.push(0);
            false_ids.push(0);
            match ensemble.kind {
                EnsembleKind::Boosted => {
                    class_trees.push(index as i64);
                    class_nodes.push(node as i64);
                    class_ids.push((index % k) as i64);
                    class_weights.push(tree.value[node]);
                }
                EnsembleKind::Forest => {
                    for class in 0..k {
                        class_trees.push(index as i64);
                        class_nodes.push(node as i64);
                        class_ids.push(class as i64);
                        class_weights.push(tree.value[node * k + class] / trees as f32);
                    }
                }
            }
        }
    }
    let (post, base) = match ensemble.kind {
        EnsembleKind::Boosted => ("SOFTMAX", ensemble.init.clone()),
        EnsembleKind::Forest => ("NONE", vec![0.0; k]),
    };
    graph.node(
        "TreeEnsembleClassifier",
        "ai.onnx.ml",
        &["z"],
        &["label", "probabilities"],
        &[
            ("base_values", Attribute::Floats(base)),
            ("class_ids", Attribute::Ints(class_ids)),
            ("class_nodeids", Attribute::Ints(class_nodes)),
            ("class_treeids", Attribute::Ints(class_trees)),
            ("class_weights", Attribute::Floats(class_weights)),
            (
                "classlabels_int64s",
                Attribute::Ints((0..k as i64).collect()),
            ),
            ("nodes_falsenodeids", Attribute::Ints(false_ids)),
            ("nodes_featureids", Attribute::Ints(feature_ids)),
            ("nodes_missing_value_tracks_true", Attribute::Ints(missing)),
            ("nodes_modes", Attribute::Texts(modes)),
            ("nodes_nodeids", Attribute::Ints(node_ids)),
            ("nodes_treeids", Attribute::Ints(tree_ids)),
            ("nodes_truenodeids", Attribute::Ints(true_ids)),
            ("nodes_values", Attribute::Floats(values)),
            ("post_transform", Attribute::Text(post)),
        ],
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_tags_encode_as_protobuf_does() {
        let mut message = Message::default();
        message.int(1, 300);
        assert_eq!(message.0, [0x08, 0xac, 0x02]);
        let mut message = Message::default();
        message.text(2, "hi");
        assert_eq!(message.0, [0x12, 0x02, b'h', b'i']);
        let mut message = Message::default();
        message.int(3, -1);
        assert_eq!(message.0.len(), 1 + 10, "negative int64 as ten bytes");
    }

    #[test]
    fn feature_names_become_unique_inputs() {
        let names = input_names(&[
            "a".to_owned(),
            "a".to_owned(),
            String::new(),
            "probabilities".to_owned(),
        ]);
        assert_eq!(names, ["a", "a_", "feature_2", "probabilities_"]);
    }
}
