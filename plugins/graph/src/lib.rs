//! # distill-graph: the graph (node classification) plugin
//!
//! Data: Cora in the Planetoid split, and any graph in the same text folder format (see [`data`]).
//! Models: GCN, GraphSAGE (mean, neighbour sampling), GAT and an MLP on node features ([`models`]); message
//! passing is sparse ([`data::sparse`]): gather + scatter-add over edge lists, never a dense `N × N` matrix.
//! Losses: the core's (KD, ...) plus `glnn` and `lsp` ([`losses`]).
//!
//! A sample is a **node**: a batch's inputs are node ids and a GNN reads the rest of the graph itself.
//! By default (`data.options.distill_nodes = "all"`) the training split holds *every* node of the graph; only
//! the training nodes carry their label (the others carry [`losses::UNLABELLED`], which the task loss skips),
//! so a distillation term sees the teacher's soft labels on all nodes — GLNN's transductive setting — while
//! teacher and scratch student learn from the 140 labels alone. Set the batch size above the node count for
//! full-batch training (one step per epoch).
//!
//! ```
//! use distill_core::Domain;
//! let m = distill_graph::GraphPlugin.manifest();
//! assert_eq!(m.name, "graph");
//! assert!(m.losses.iter().any(|l| l == "lsp"));
//! ```
#![warn(missing_docs)]

pub mod data;
pub mod losses;
pub mod metrics;
pub mod models;
pub mod task;

pub use task::GraphTask;

use std::{path::PathBuf, sync::Arc};

use candle_core::{Device, Tensor};
use distill_core::{
    losses::{DistillLoss, LossSpec},
    recipe::Recipe,
    task::MetricInfo,
    BuildContext, Domain, Error, Manifest, Network, Outputs, Plugin, Result, RunContext, Task,
    TaskInfo,
};
use serde::Deserialize;

use crate::{
    data::{load_graph_dir, Adjacency, Expect, Graph},
    losses::{Glnn, Lsp},
    models::{build_model, ModelSpec, ARCHS},
};

/// Data sets this plugin reads: `cora` (`<data dir>/cora`) and `graph-folder` (your own graph).
pub const DATASETS: &[&str] = &["cora", "graph-folder"];
/// Losses this plugin adds.
pub const LOSSES: &[&str] = &["glnn", "lsp"];

/// The graph plugin. Its networks hold the graph they run on: [`Domain::build_network`] takes it from the
/// loaded [`GraphTask`] (or, under `distill check`, from a placeholder task of the recipe's shape).
#[derive(Default)]
pub struct GraphPlugin;

/// `[data.options]` of a graph recipe.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct GraphOptions {
    /// graph-folder: the folder (relative to the data dir, or absolute).
    root: Option<PathBuf>,
    /// graph-folder: number of node features.
    num_features: Option<usize>,
    /// graph-folder: number of classes.
    num_classes: Option<usize>,
    /// Divide each feature row by its sum (Kipf & Welling). Default true.
    #[serde(default = "yes")]
    row_normalize: bool,
    /// Nodes in the training split: `"all"` (default; unlabelled ones carry no target) or `"train"`.
    #[serde(default = "all")]
    distill_nodes: String,
}

fn yes() -> bool {
    true
}
fn all() -> String {
    "all".into()
}

fn options(recipe: &Recipe) -> Result<GraphOptions> {
    let o: GraphOptions = recipe.typed(
        "data.options",
        &recipe.data.options.clone().unwrap_or_default(),
    )?;
    if o.distill_nodes != "all" && o.distill_nodes != "train" {
        return Err(Error::config(
            "data.options",
            format!(
                "`distill_nodes` must be \"all\" or \"train\", got \"{}\"",
                o.distill_nodes
            ),
        ));
    }
    Ok(o)
}

/// Features and classes of a recipe's data set, known without reading it.
fn shape_of(recipe: &Recipe, o: &GraphOptions) -> Result<(usize, usize)> {
    match recipe.dataset.as_str() {
        "cora" => Ok((1433, 7)),
        "graph-folder" => match (o.root.as_ref(), o.num_features, o.num_classes) {
            (Some(_), Some(f), Some(c)) if f > 0 && c > 0 => Ok((f, c)),
            _ => Err(Error::config(
                "data.options",
                "graph-folder needs `root` (the folder), `num_features` and `num_classes` (both > 0)",
            )),
        },
        other => Err(Error::Unknown {
            what: "data set",
            name: other.to_string(),
            known: DATASETS.join(", "),
        }),
    }
}

/// A graph with `f` zero features, `c` classes and two joined nodes: what networks are built on for a dry run.
fn placeholder(name: &str, f: usize, c: usize) -> Result<Graph> {
    let x = Tensor::zeros((2, f), candle_core::DType::F32, &Device::Cpu)?;
    Graph::new(
        name,
        x,
        c,
        vec![Some(0); 2],
        Adjacency::from_pairs(2, &[(0, 1)]),
        vec![0],
        vec![1],
        vec![1],
    )
}

impl Plugin for GraphPlugin {}

impl Domain for GraphPlugin {
    fn manifest(&self) -> Manifest {
        Manifest {
            name: "graph".into(),
            domain: "graph neural networks (node classification)".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Cora (Planetoid split) and graph folders; sparse GCN, GraphSAGE, GAT and MLP; GLNN and LSP"
                .into(),
            models: ARCHS.iter().map(|s| s.to_string()).collect(),
            datasets: DATASETS.iter().map(|s| s.to_string()).collect(),
            losses: LOSSES.iter().map(|s| s.to_string()).collect(),
            recipes: vec![
                "plugins/graph/recipes/gcn-cora.toml".into(),
                "plugins/graph/recipes/glnn-cora.toml".into(),
                "plugins/graph/recipes/lsp-cora.toml".into(),
            ],
        }
    }

    fn task_info(&self, recipe: &Recipe) -> Result<TaskInfo> {
        let o = options(recipe)?;
        let (_f, c) = shape_of(recipe, &o)?;
        if o.distill_nodes == "all" {
            for (i, l) in recipe.distill.losses.iter().enumerate() {
                if l.name == "ce" || l.name == "dkd" {
                    return Err(Error::config(
                        format!("distill.losses[{i}]"),
                        format!(
                            "`{}` reads every node's label, but on a graph the training split holds unlabelled nodes \
                             too: use `task` (cross-entropy on the training labels) or `glnn`",
                            l.name
                        ),
                    ));
                }
            }
        }
        Ok(TaskInfo {
            dataset: recipe.dataset.clone(),
            input_shape: vec![1],
            num_classes: c,
            metric: MetricInfo {
                name: "accuracy".into(),
                higher_is_better: true,
            },
        })
    }

    fn load_task(&self, recipe: &Recipe, ctx: &RunContext) -> Result<Box<dyn Task>> {
        let info = self.task_info(recipe)?;
        let o = options(recipe)?;
        let (f, c) = shape_of(recipe, &o)?;
        let dir = data::graph_dir(&ctx.data_dir, &recipe.dataset, o.root.as_ref());
        let expect = Expect {
            num_features: Some(f),
            num_classes: Some(c),
        };
        let g = Arc::new(load_graph_dir(
            &dir,
            &recipe.dataset,
            &expect,
            o.row_normalize,
            &ctx.device,
        )?);
        let v = recipe.data.validation;
        if v != 0 && v != g.val.len() {
            return Err(Error::config(
                "data.validation",
                format!(
                    "is {v}, but {} lists {} validation nodes: on a graph the validation split is that file; \
                     set data.validation to {} (or 0)",
                    dir.join("split_val.txt").display(),
                    g.val.len(),
                    g.val.len()
                ),
            ));
        }
        if recipe.data.train_limit.is_some() || recipe.data.test_limit.is_some() {
            return Err(Error::config(
                "data",
                "`train_limit` and `test_limit` are not supported on graphs (the splits are the split_*.txt files)",
            ));
        }
        Ok(Box::new(GraphTask::new(info, g, o.distill_nodes == "all")))
    }

    fn placeholder_task(&self, recipe: &Recipe) -> Result<Option<Box<dyn Task>>> {
        let info = self.task_info(recipe)?;
        let o = options(recipe)?;
        let (f, c) = shape_of(recipe, &o)?;
        let g = Arc::new(placeholder(&recipe.dataset, f, c)?);
        Ok(Some(Box::new(GraphTask::new(
            info,
            g,
            o.distill_nodes == "all",
        ))))
    }

    fn build_network(&self, model: &toml::Table, ctx: &BuildContext) -> Result<Box<dyn Network>> {
        if model.contains_key("weight_decay") {
            return Err(Error::config(
                format!("`{}`", ctx.model_key),
                "`weight_decay` is an optimiser option now: optimizer = { kind = \"adam\", lr = 0.01, \
                 weight_decay = 5e-4, decay_only = [\"conv1.lin.weight\"] } (Kipf's L2 on the first layer)",
            ));
        }
        let spec: ModelSpec = ctx.model(model)?;
        let graph = ctx
            .task
            .and_then(|t| t.as_any())
            .and_then(|t| t.downcast_ref::<GraphTask>())
            .map(|t| t.graph().clone())
            .ok_or_else(|| {
                Error::msg(
                    "the graph plugin builds networks over a graph: it needs its own loaded task",
                )
            })?;
        if graph.num_classes != ctx.info.num_classes {
            return Err(Error::Shape(format!(
                "the loaded graph has {} classes, the task {}",
                graph.num_classes, ctx.info.num_classes
            )));
        }
        build_model(&spec, graph, ctx.seed)
    }

    fn build_loss(
        &self,
        spec: &LossSpec,
        student: &Outputs,
        teacher: &Outputs,
        ctx: &BuildContext,
    ) -> Result<Option<Box<dyn DistillLoss>>> {
        let extra = |allowed: &[&str]| -> Result<()> {
            let set: Vec<(&str, bool)> = vec![
                ("temperature", spec.temperature.is_some()),
                ("alpha", spec.alpha.is_some()),
                ("beta", spec.beta.is_some()),
                ("student_feature", spec.student_feature.is_some()),
                ("teacher_feature", spec.teacher_feature.is_some()),
                ("p", spec.p.is_some()),
                ("distance_weight", spec.distance_weight.is_some()),
                ("angle_weight", spec.angle_weight.is_some()),
                ("params", spec.params.is_some()),
            ];
            for (k, on) in set {
                if on && !allowed.contains(&k) {
                    return Err(Error::msg(format!(
                        "`{}` does not take `{k}` (it takes: {})",
                        spec.name,
                        allowed.join(", ")
                    )));
                }
            }
            Ok(())
        };
        match spec.name.as_str() {
            "glnn" => {
                extra(&["temperature", "params"])?;
                let t = spec.temperature.unwrap_or(1.0);
                let mut lambda = 0.0;
                if let Some(p) = &spec.params {
                    for (k, v) in p {
                        match (
                            k.as_str(),
                            v.as_float().or(v.as_integer().map(|i| i as f64)),
                        ) {
                            ("lambda", Some(x)) if (0.0..=1.0).contains(&x) => lambda = x,
                            ("lambda", _) => {
                                return Err(Error::msg(
                                    "glnn: `params.lambda` must be a number in [0, 1]",
                                ))
                            }
                            (other, _) => {
                                return Err(Error::msg(format!(
                                    "glnn: unknown parameter `{other}` (known: lambda)"
                                )))
                            }
                        }
                    }
                }
                if !(t > 0.0 && t.is_finite()) {
                    return Err(Error::msg(format!(
                        "glnn: temperature must be > 0, got {t}"
                    )));
                }
                Ok(Some(Box::new(Glnn { lambda, t })))
            }
            "lsp" => {
                extra(&["student_feature", "teacher_feature"])?;
                let sf = spec.student_feature.as_deref().unwrap_or("hidden1");
                let tf = spec.teacher_feature.as_deref().unwrap_or("hidden1");
                let graph = ctx
                    .task
                    .and_then(|t| t.as_any())
                    .and_then(|t| t.downcast_ref::<GraphTask>())
                    .map(|t| t.graph().clone())
                    .ok_or_else(|| Error::msg("lsp: no graph loaded"))?;
                Ok(Some(Box::new(Lsp::new(sf, tf, student, teacher, graph)?)))
            }
            _ => Ok(None),
        }
    }

    fn predict_input(
        &self,
        _req: &distill_core::deploy::PredictRequest,
    ) -> Result<candle_core::Tensor> {
        Err(Error::config(
            "predict",
            "is not supported for graph tasks: a GNN classifies nodes of the graph it was trained on, not \
             files (evaluate it with `distill eval`)",
        ))
    }
}
