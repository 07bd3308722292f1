//! ONNX export of every student architecture the builtin plugins train, run by a second runtime.
//!
//! For each network (small random-init shapes, batch-norm running statistics and LayerNorm scales set to
//! random values so the eval-mode normalisations are really exercised): `export_onnx` writes the model,
//! tract-onnx loads and optimises it and runs it on a batch of 3 and on a batch of 1 (the batch dimension is
//! symbolic), and every output must equal our eval-mode forward pass within 1e-4 (max abs difference).
//! tract also decodes the file with its own copy of the official `onnx.proto`, which checks our field
//! numbers: IR version, opset, input and output names, initializers named after the parameters.
//!
//! Each case leaves `model.onnx`, `inputs.safetensors` and `expected.safetensors` (our outputs) under
//! `<target dir>/onnx-export/<case>/`, for `scripts/interop/check_onnx.py` (onnxruntime and onnx.checker).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};
use distill_core::{network::export_onnx, Mode, Network, Rng};
use tract_onnx::prelude::{self as tract, Framework, InferenceModelExt, IntoRunnable, TValue};

/// The largest absolute difference allowed between tract's outputs and ours.
const TOL: f32 = 1e-4;

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// `<target dir>/onnx-export`: the test binary lives in `<target dir>/<profile>/deps/`.
fn export_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.ancestors()
        .nth(3)
        .expect("a target directory above deps/")
        .join("onnx-export")
}

/// Sets every batch-norm running mean / variance and its scale / shift, and every LayerNorm's, to values
/// drawn from the parameter's name (fresh networks have mean 0, variance 1, scale 1, shift 0, which would
/// hide a normalisation done wrong).
fn randomise_norms(net: &dyn Network) {
    let data = net.varmap().data().lock().unwrap();
    let bn_prefixes: Vec<String> = data
        .keys()
        .filter_map(|k| k.strip_suffix(".running_mean").map(str::to_string))
        .collect();
    for (name, var) in data.iter() {
        let prefix = name.rsplit_once('.').map_or("", |(p, _)| p);
        let is_norm = bn_prefixes.iter().any(|p| p == prefix) || prefix.ends_with("LayerNorm");
        let (lo, hi) = match name.rsplit('.').next().unwrap() {
            "running_mean" => (-0.3, 0.3),
            "running_var" => (0.5, 2.0),
            "weight" if is_norm => (0.5, 1.5),
            "bias" if is_norm => (-0.3, 0.3),
            _ => continue,
        };
        let mut rng = Rng::derive(7, &[&name]);
        let v: Vec<f32> = (0..var.elem_count())
            .map(|_| lo + (hi - lo) * rng.uniform_f32())
            .collect();
        var.set(&Tensor::from_vec(v, var.dims(), var.device()).unwrap())
            .unwrap();
    }
}

/// `[dims]` uniform in `[-1, 1)`, seeded.
fn uniform(dims: &[usize], seed: u64) -> Tensor {
    let mut rng = Rng::new(seed);
    let n = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| 2.0 * rng.uniform_f32() - 1.0).collect();
    Tensor::from_vec(v, dims, &Device::Cpu).unwrap()
}

fn to_tract(t: &Tensor) -> Res<TValue> {
    let dims = t.dims().to_vec();
    let t = match t.dtype() {
        DType::F32 => tract::Tensor::from_shape(&dims, &t.flatten_all()?.to_vec1::<f32>()?)?,
        DType::I64 => tract::Tensor::from_shape(&dims, &t.flatten_all()?.to_vec1::<i64>()?)?,
        other => return Err(format!("no tract input for {other:?}").into()),
    };
    Ok(t.into())
}

/// What one case's export must satisfy.
struct Case<'a> {
    name: &'a str,
    net: &'a dyn Network,
    /// The ONNX inputs (name, batch-3 value) in the graph's order.
    inputs: Vec<(&'a str, Tensor)>,
    /// The ONNX output names, in order.
    outputs: &'a [&'a str],
    /// Our eval-mode outputs for the first `n` rows of the inputs, in the outputs' order.
    ours: &'a dyn Fn(usize) -> distill_core::Result<Vec<Tensor>>,
}

/// Exports, decodes, runs with tract at batch 3 and 1, compares; returns the worst difference.
fn check(case: Case) -> Res<f32> {
    let dir = export_dir().join(case.name);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("model.onnx");
    export_onnx(case.net, &path)?;

    // The file through tract's own protobuf declarations (generated from the official onnx.proto).
    let proto = tract_onnx::onnx().proto_model_for_path(&path)?;
    assert_eq!(proto.ir_version, 8, "{}", case.name);
    assert_eq!(proto.opset_import.len(), 1);
    assert_eq!(proto.opset_import[0].domain, "");
    assert_eq!(proto.opset_import[0].version, 17);
    assert_eq!(proto.producer_name, "distill");
    assert!(
        !proto.doc_string.is_empty(),
        "{}: documents its input",
        case.name
    );
    let graph = proto.graph.as_ref().expect("a graph");
    let names = |v: &[tract_onnx::pb::ValueInfoProto]| -> Vec<String> {
        v.iter().map(|i| i.name.clone()).collect()
    };
    let want_in: Vec<&str> = case.inputs.iter().map(|(n, _)| *n).collect();
    assert_eq!(names(&graph.input), want_in, "{}", case.name);
    assert_eq!(names(&graph.output), case.outputs, "{}", case.name);
    // initializers carry the parameter names, and every parameter is there exactly once
    let params = distill_core::network::varmap_tensors(case.net.varmap())?;
    let init: Vec<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let missing: Vec<&String> = params
        .keys()
        .filter(|k| !init.contains(&k.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{}: parameters missing from the initializers by name: {missing:?}",
        case.name
    );

    // Inputs and our outputs for the Python check.
    let save = |file: &str, named: Vec<(String, Tensor)>| -> Res<()> {
        let map: HashMap<String, Tensor> = named.into_iter().collect();
        candle_core::safetensors::save(&map, dir.join(file))?;
        Ok(())
    };
    let ours3 = (case.ours)(3)?;
    save(
        "inputs.safetensors",
        case.inputs
            .iter()
            .map(|(n, t)| (n.to_string(), t.clone()))
            .collect(),
    )?;
    save(
        "expected.safetensors",
        case.outputs
            .iter()
            .map(|n| n.to_string())
            .zip(ours3.iter().cloned())
            .collect(),
    )?;

    let model = tract_onnx::onnx()
        .model_for_path(&path)?
        .into_optimized()?
        .into_runnable()?;
    let mut worst = 0f32;
    for n in [3usize, 1] {
        let inputs = case
            .inputs
            .iter()
            .map(|(_, t)| to_tract(&t.narrow(0, 0, n)?))
            .collect::<Res<tract::TVec<TValue>>>()?;
        let got = model.run(inputs)?;
        let ours = if n == 3 {
            ours3.clone()
        } else {
            (case.ours)(n)?
        };
        assert_eq!(got.len(), ours.len(), "{}: outputs", case.name);
        for ((g, o), oname) in got.iter().zip(&ours).zip(case.outputs) {
            let g = g.to_plain_array_view::<f32>()?;
            assert_eq!(g.shape(), o.dims(), "{} `{oname}` at batch {n}", case.name);
            let o: Vec<f32> = o.flatten_all()?.to_vec1()?;
            assert!(
                g.iter().chain(&o).all(|v| v.is_finite()),
                "{} `{oname}` at batch {n}: a NaN or infinite output",
                case.name
            );
            let diff = g
                .iter()
                .zip(&o)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                diff <= TOL,
                "{} `{oname}` at batch {n}: max |tract - ours| = {diff:e} > {TOL:e}",
                case.name
            );
            // the outputs are not trivially equal (e.g. all zeros)
            let spread = o.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(spread > 1e-3, "{} `{oname}`: outputs near zero", case.name);
            worst = worst.max(diff);
        }
    }
    eprintln!("{}: max |tract - ours| = {worst:.2e}", case.name);
    Ok(worst)
}

/// The image-shaped single-input case: ONNX `input`, our forward on the same rows.
fn image_case(name: &str, net: &dyn Network, shape: [usize; 3], seed: u64) -> Res<f32> {
    randomise_norms(net);
    let x = uniform(&[3, shape[0], shape[1], shape[2]], seed);
    let ours = |n: usize| -> distill_core::Result<Vec<Tensor>> {
        Ok(vec![net.forward(&x.narrow(0, 0, n)?, Mode::Eval)?.logits])
    };
    check(Case {
        name,
        net,
        inputs: vec![("input", x.clone())],
        outputs: &["logits"],
        ours: &ours,
    })
}

#[test]
fn vision_students_match_tract() -> Res<()> {
    use distill_vision::models::{build_model, ModelSpec};
    let dev = Device::Cpu;
    // torchvision's ImageNet ResNets at a tiny width; odd sides exercise the padded stem max-pool's edges
    let tv = |arch: &str| {
        let mut s = ModelSpec::new(arch);
        s.width = Some(if arch == "resnet18" { 4 } else { 2 });
        s
    };
    let mut mlp = ModelSpec::new("mlp");
    mlp.hidden = Some(vec![24, 16]);
    mlp.dropout = Some(0.5);
    mlp.input_dropout = Some(0.2);
    for (name, spec, shape) in [
        ("vision-mlp", mlp, [1, 8, 6]),
        ("vision-lenet5", ModelSpec::new("lenet5"), [3, 21, 19]),
        ("vision-resnet8", ModelSpec::new("resnet8"), [3, 12, 12]),
        ("vision-resnet8x4", ModelSpec::new("resnet8x4"), [3, 8, 8]),
        ("vision-wrn-16-1", ModelSpec::new("wrn-16-1"), [3, 12, 10]),
        ("vision-resnet18-w4", tv("resnet18"), [3, 35, 33]),
        ("vision-resnet50-w2", tv("resnet50"), [3, 33, 32]),
    ] {
        let net = build_model(&spec, shape, 7, 1, &dev)?;
        image_case(name, net.as_ref(), shape, 11)?;
    }
    Ok(())
}

#[test]
fn audio_students_match_tract() -> Res<()> {
    use distill_audio::models::{build_model, ModelSpec};
    let dev = Device::Cpu;
    let spec = |arch: &str| ModelSpec {
        arch: arch.into(),
        widths: (arch == "res-cnn").then(|| vec![4, 4, 8, 8]),
        width: (arch == "ds-cnn").then_some(8),
        blocks: (arch == "ds-cnn").then_some(2),
        dropout: Some(0.3),
    };
    let shape = [1, 13, 11];
    let ds = build_model(&spec("ds-cnn"), shape, 5, 2, &dev)?;
    image_case("audio-ds-cnn", ds.as_ref(), shape, 12)?;
    let res = build_model(&spec("res-cnn"), shape, 5, 2, &dev)?;
    image_case("audio-res-cnn", res.as_ref(), shape, 13)?;
    Ok(())
}

#[test]
fn centernet_student_matches_tract() -> Res<()> {
    use distill_detection::models::{build_model, ModelSpec};
    let spec = ModelSpec {
        arch: "centernet".into(),
        width: Some(4),
        depth: Some(1),
        neck: None,
        head: Some(6),
    };
    let net = build_model(&spec, 1, 32, 3, 3, &Device::Cpu)?;
    randomise_norms(net.as_ref());
    let x = uniform(&[3, 1, 32, 32], 14);
    let ours = |n: usize| -> distill_core::Result<Vec<Tensor>> {
        let o = net.forward(&x.narrow(0, 0, n)?, Mode::Eval)?;
        Ok(vec![
            o.logits.clone(),
            o.feature("size")?.tensor.clone(),
            o.feature("offset")?.tensor.clone(),
        ])
    };
    check(Case {
        name: "detection-centernet",
        net: net.as_ref(),
        inputs: vec![("input", x.clone())],
        outputs: &["logits", "size", "offset"],
        ours: &ours,
    })?;
    Ok(())
}

#[test]
fn graph_mlp_matches_tract_on_feature_rows() -> Res<()> {
    use distill_graph::{data::generate_graph, models::build_model, models::ModelSpec};
    let graph = Arc::new(generate_graph(40, 80, 12, 4, 3, &Device::Cpu)?);
    let spec = ModelSpec::Mlp {
        hidden: vec![16, 8],
        dropout: 0.5,
        input_dropout: 0.1,
    };
    let net = build_model(&spec, graph.clone(), 4)?;
    let ids = Tensor::new(&[5u32, 17, 33], &Device::Cpu)?;
    let rows = graph.features.index_select(&ids, 0)?;
    let ours = |n: usize| -> distill_core::Result<Vec<Tensor>> {
        Ok(vec![net.forward(&ids.narrow(0, 0, n)?, Mode::Eval)?.logits])
    };
    check(Case {
        name: "graph-mlp",
        net: net.as_ref(),
        inputs: vec![("input", rows)],
        outputs: &["logits"],
        ours: &ours,
    })?;
    Ok(())
}

/// A tiny BERT `config.json` under `dir/tiny`.
fn tiny_bert(dir: &Path) -> PathBuf {
    let base = dir.join("tiny");
    std::fs::create_dir_all(&base).unwrap();
    std::fs::write(
        base.join("config.json"),
        r#"{"vocab_size": 60, "hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 4,
            "intermediate_size": 24, "max_position_embeddings": 12, "type_vocab_size": 2,
            "layer_norm_eps": 1e-12, "hidden_act": "gelu"}"#,
    )
    .unwrap();
    base
}

#[test]
fn bert_students_match_tract() -> Res<()> {
    use distill_text::models::{build_model, Head, ModelSpec};
    let tmp = tempfile::tempdir()?;
    tiny_bert(tmp.path());
    // three sentences of up to 7 tokens, [PAD] = 0 at the end of the shorter ones
    let ids: Vec<u32> = vec![
        2, 17, 33, 5, 9, 41, 3, //
        2, 8, 3, 0, 0, 0, 0, //
        2, 59, 12, 12, 3, 0, 0,
    ];
    let ids = Tensor::from_vec(ids, (3, 7), &Device::Cpu)?;
    let ids64 = ids.to_dtype(DType::I64)?;
    let mask64 = ids.ne(0u32)?.to_dtype(DType::I64)?;
    for (name, pooling, head) in [
        ("text-bert-mean-classifier", "mean", Head::Classify(3)),
        ("text-bert-cls-classifier", "cls", Head::Classify(2)),
        ("text-bert-mean-embedding", "mean", Head::Embed),
        ("text-bert-pooler-classifier", "pooler", Head::Classify(2)),
    ] {
        let table: toml::Table = toml::from_str(&format!(
            "arch = \"bert\"\nbase = \"tiny\"\ninit = \"random\"\npooling = \"{pooling}\"\ndropout = 0.2"
        ))?;
        let spec = ModelSpec::parse(&table)?;
        let net = build_model(&spec, head, tmp.path(), 5, &Device::Cpu)?;
        randomise_norms(&net);
        // BERT's N(0, 0.02) makes near-uniform attention and near-zero logits: widen the dense layers and
        // the tables (std 0.3), so a wrong scale, mask or activation shows
        for (name, var) in net.varmap().data().lock().unwrap().iter() {
            if name.ends_with(".weight") && !name.contains("LayerNorm") {
                var.set(&(var.as_tensor() * 15.0)?)?;
            }
        }
        let ours = |n: usize| -> distill_core::Result<Vec<Tensor>> {
            Ok(vec![net.forward(&ids.narrow(0, 0, n)?, Mode::Eval)?.logits])
        };
        check(Case {
            name,
            net: &net,
            inputs: vec![
                ("input_ids", ids64.clone()),
                ("attention_mask", mask64.clone()),
            ],
            outputs: &["logits"],
            ours: &ours,
        })?;
    }
    Ok(())
}

#[test]
fn a_network_without_export_is_a_clear_error() -> Res<()> {
    use distill_graph::{data::generate_graph, models::build_model, models::ModelSpec};
    let graph = Arc::new(generate_graph(20, 30, 5, 3, 3, &Device::Cpu)?);
    let spec = ModelSpec::Gcn {
        hidden: vec![4],
        dropout: 0.5,
    };
    let net = build_model(&spec, graph, 4)?;
    let tmp = tempfile::tempdir()?;
    let path = tmp.path().join("gcn.onnx");
    let e = export_onnx(net.as_ref(), &path).unwrap_err().to_string();
    assert!(e.contains("has no ONNX export") && e.contains("gcn"), "{e}");
    assert!(!path.exists(), "nothing written");

    // a path that cannot be written names the path
    let mlp = distill_vision::models::build_model(
        &distill_vision::models::ModelSpec::new("mlp"),
        [1, 4, 4],
        3,
        0,
        &Device::Cpu,
    )?;
    let blocker = tmp.path().join("a-file");
    std::fs::write(&blocker, "x")?;
    let bad = blocker.join("model.onnx");
    let e = export_onnx(mlp.as_ref(), &bad).unwrap_err().to_string();
    assert!(e.contains(&blocker.display().to_string()), "{e}");
    Ok(())
}

/// The text recipes' students at their real size, from the pretrained MiniLM (`$DISTILL_MODELS`; skipped
/// with a note when unset, never under `CI=true`): the pruned 4-layer 312-wide classifier of `sst2-tinybert`
/// and the 2-layer sentence-embedding student of `stsb-embedding`, on real WordPiece ids of mixed lengths.
#[test]
fn pretrained_minilm_students_match_tract() -> Res<()> {
    use distill_text::data::{pad_batch, TextTokenizer};
    use distill_text::models::{build_model, Head, ModelSpec};
    let Some(models) = distill_data::testing::required_dir(
        "DISTILL_MODELS",
        Some("all-MiniLM-L6-v2"),
        "the ONNX export of the pretrained MiniLM students",
    ) else {
        return Ok(());
    };
    let tok = TextTokenizer::from_file(&models.join("all-MiniLM-L6-v2/tokenizer.json"), 64)?;
    let rows: Vec<Vec<u32>> = [
        "a gripping, beautifully shot film that never lets go",
        "dull.",
        "the cast is fine but the script wanders for two hours",
    ]
    .iter()
    .map(|s| tok.encode(s))
    .collect::<distill_core::Result<_>>()?;
    let refs: Vec<&[u32]> = rows.iter().map(Vec::as_slice).collect();
    let ids = pad_batch(&refs, &Device::Cpu)?;
    let ids64 = ids.to_dtype(DType::I64)?;
    let mask64 = ids.ne(0u32)?.to_dtype(DType::I64)?;
    for (name, model, head) in [
        (
            "text-minilm-tinybert-classifier",
            "layers = 4\nhidden = 312\nheads = 12\nintermediate = 1200",
            Head::Classify(2),
        ),
        (
            "text-minilm-l2-embedding",
            "layers = 2\ninit_layers = [0, 3]",
            Head::Embed,
        ),
    ] {
        let table: toml::Table = toml::from_str(&format!(
            "arch = \"bert\"\nbase = \"all-MiniLM-L6-v2\"\ninit = \"pretrained\"\n{model}"
        ))?;
        let net = build_model(&ModelSpec::parse(&table)?, head, &models, 0, &Device::Cpu)?;
        let ours = |n: usize| -> distill_core::Result<Vec<Tensor>> {
            Ok(vec![net.forward(&ids.narrow(0, 0, n)?, Mode::Eval)?.logits])
        };
        check(Case {
            name,
            net: &net,
            inputs: vec![
                ("input_ids", ids64.clone()),
                ("attention_mask", mask64.clone()),
            ],
            outputs: &["logits"],
            ours: &ours,
        })?;
    }
    Ok(())
}

/// A network of layers no builtin student uses (a strided `Conv1d`, a `Bottleneck` trunk, a strided
/// depthwise-separable block), exported through the public emitters the way a third-party plugin would.
struct Composed {
    conv1d: distill_nn::layers::Conv1d,
    trunk: distill_nn::layers::ResNetTrunk,
    ds: distill_nn::layers::DepthwiseSeparable,
    varmap: candle_nn::VarMap,
}

impl Composed {
    fn new() -> Res<Self> {
        use distill_nn::layers::{
            BlockKind, Conv1d, ConvConfig, DepthwiseSeparable, ResNetTrunk, ResNetTrunkConfig,
        };
        let varmap = candle_nn::VarMap::new();
        let vb = distill_nn::init::seeded_var_builder(&varmap, 9, &Device::Cpu);
        let trunk = ResNetTrunk::new(
            &ResNetTrunkConfig {
                in_channels: 3,
                stem_width: 4,
                stem_stride: 1,
                stage_widths: vec![2, 3],
                blocks_per_stage: 2,
                block: BlockKind::Bottleneck,
            },
            vb.pp("trunk"),
        )?;
        Ok(Self {
            conv1d: Conv1d::new(&ConvConfig::new(3, 5, 3).stride(2), vb.pp("conv1d"))?,
            ds: DepthwiseSeparable::new(&ConvConfig::new(12, 6, 3).stride(2), vb.pp("ds"))?,
            trunk,
            varmap,
        })
    }
}

impl Network for Composed {
    /// `input` `[B, 3, 8, 8]`: the trunk then the strided block, pooled (`logits` `[B, 6]`); and the rows
    /// of the image as a `[B, 3, 64]` sequence through the 1-D convolution (`seq` `[B, 5, 32]`).
    fn forward(&self, input: &Tensor, mode: Mode) -> distill_core::Result<distill_core::Outputs> {
        let (_, maps) = self.trunk.forward(input, mode.is_train())?;
        let y = self.ds.forward(maps.last().unwrap(), mode.is_train())?;
        let seq = self.conv1d.forward(&input.flatten_from(2)?)?;
        distill_core::Outputs::logits(y.mean((2, 3))?).with_feature(
            "seq",
            distill_core::FeatureKind::Sequence,
            seq,
        )
    }
    fn varmap(&self) -> &candle_nn::VarMap {
        &self.varmap
    }
    fn describe(&self) -> String {
        "composed".into()
    }
    fn to_onnx(&self, g: &mut distill_nn::onnx::Graph) -> distill_core::Result<()> {
        use distill_nn::onnx;
        g.set_doc("input: [batch, 3, 8, 8]; logits: [batch, 6]; seq: [batch, 5, 32]");
        let x = onnx::input_f32(g, "input", &[3, 8, 8])?;
        let (_, maps) = self.trunk.onnx(g, &x)?;
        let y = self.ds.onnx(g, maps.last().unwrap())?;
        let y = onnx::global_avg_pool(g, &y, "pool")?;
        onnx::output_f32(g, &y, "logits", &[6])?;
        let shape = g.ints("seq_shape", &[0, 3, 64])?;
        let rows = g.op("Reshape", &[&x, &shape], &[], "rows")?;
        let seq = self.conv1d.onnx(g, &rows)?;
        onnx::output_f32(g, &seq, "seq", &[5, 32])
    }
}

#[test]
fn layers_without_a_builtin_student_match_tract() -> Res<()> {
    let net = Composed::new()?;
    randomise_norms(&net);
    let x = uniform(&[3, 3, 8, 8], 15);
    let ours = |n: usize| -> distill_core::Result<Vec<Tensor>> {
        let o = net.forward(&x.narrow(0, 0, n)?, Mode::Eval)?;
        Ok(vec![o.logits.clone(), o.feature("seq")?.tensor.clone()])
    };
    check(Case {
        name: "layers-composed",
        net: &net,
        inputs: vec![("input", x.clone())],
        outputs: &["logits", "seq"],
        ours: &ours,
    })?;
    Ok(())
}
