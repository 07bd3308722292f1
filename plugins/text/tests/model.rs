//! The BERT encoder and the text losses on small random networks, against values computed independently
//! (by hand or by plain loops over the same numbers). Needs no files except a config written here.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};
use distill_core::{losses::LossSpec, Batch, FeatureKind, Mode, Network, Outputs};
use distill_text::{
    losses::{build, masked_cosine_loss, pkd_pairs, PkdParams},
    models::{build_model, default_init_layers, Head, ModelSpec},
};

/// A models dir holding `tiny/config.json` (vocab 50, hidden 16, 4 heads, 3 layers).
fn tiny_models() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir(d.path().join("tiny")).unwrap();
    std::fs::write(
        d.path().join("tiny/config.json"),
        r#"{"vocab_size": 50, "hidden_size": 16, "num_hidden_layers": 3, "num_attention_heads": 4,
            "intermediate_size": 32, "max_position_embeddings": 20, "hidden_act": "gelu"}"#,
    )
    .unwrap();
    d
}

fn spec(extra: &str) -> ModelSpec {
    let t: toml::Table = toml::from_str(&format!(
        "arch = \"bert\"\nbase = \"tiny\"\ninit = \"random\"\n{extra}"
    ))
    .unwrap();
    ModelSpec::parse(&t).unwrap()
}

fn ids(rows: &[&[u32]]) -> Tensor {
    distill_text::data::pad_batch(rows, &Device::Cpu).unwrap()
}

#[test]
fn outputs_have_the_documented_features_and_padding_does_not_leak() {
    let m = tiny_models();
    let net = build_model(&spec(""), Head::Classify(3), m.path(), 7, &Device::Cpu).unwrap();
    let out = net
        .forward(&ids(&[&[1, 5, 9, 2], &[1, 7, 2]]), Mode::Eval)
        .unwrap();
    assert_eq!(out.logits.dims(), &[2, 3]);
    assert_eq!(out.feature("hidden.3").unwrap().tensor.dims(), &[2, 4, 16]);
    assert_eq!(out.feature("attn.1").unwrap().kind, FeatureKind::Attention);
    assert_eq!(out.feature("attn.1").unwrap().tensor.dims(), &[2, 4, 4, 4]);
    assert_eq!(out.feature("cls.0").unwrap().tensor.dims(), &[2, 16]);
    assert!(out.feature("hidden.4").is_err());
    // attention to the padding position of row 2 is (numerically) zero
    let att = out
        .feature("attn.2")
        .unwrap()
        .tensor
        .narrow(0, 1, 1)
        .unwrap()
        .narrow(3, 3, 1)
        .unwrap();
    assert!(
        att.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            < 1e-4
    );
    // the same sentence alone gives the same logits as padded in a batch
    let alone = net.forward(&ids(&[&[1, 7, 2]]), Mode::Eval).unwrap();
    let diff = (alone.logits - out.logits.narrow(0, 1, 1).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-5, "padding changed the logits by {diff}");
}

#[test]
fn bad_inputs_are_shape_errors() {
    let m = tiny_models();
    let net = build_model(&spec(""), Head::Classify(2), m.path(), 0, &Device::Cpu).unwrap();
    let e = net
        .forward(&ids(&[&[1, 60, 2]]), Mode::Eval)
        .err()
        .unwrap()
        .to_string();
    assert!(
        e.contains("token id 60") && e.contains("vocabulary of 50"),
        "{e}"
    );
    let long: Vec<u32> = vec![3; 21];
    let e = net
        .forward(&ids(&[&long]), Mode::Eval)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("21 tokens") && e.contains("20 positions"), "{e}");
    let e = net
        .forward(
            &Tensor::zeros((2, 2, 3), DType::U32, &Device::Cpu).unwrap(),
            Mode::Eval,
        )
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("[batch, tokens]"), "{e}");
    let e = build_model(
        &spec("hidden = 18"),
        Head::Classify(2),
        m.path(),
        0,
        &Device::Cpu,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(e.contains("not a multiple of the 4 attention heads"), "{e}");
    let e = build_model(
        &spec("").clone(),
        Head::Classify(2),
        &m.path().join("nowhere"),
        0,
        &Device::Cpu,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("config.json") && e.contains("not found") && e.contains("DISTILL_MODELS"),
        "{e}"
    );
}

#[test]
fn pretrained_students_take_the_named_teacher_layers_and_frozen_ones_get_no_gradient() {
    let m = tiny_models();
    // a "pretrained" model: the random tiny net saved in Hugging Face names
    let teacher = build_model(&spec(""), Head::Embed, m.path(), 3, &Device::Cpu).unwrap();
    distill_core::network::save_network(&teacher, &m.path().join("tiny/model.safetensors"))
        .unwrap();
    assert_eq!(default_init_layers(2, 6), vec![0, 3]);
    assert_eq!(default_init_layers(3, 6), vec![0, 2, 4]);
    let t: toml::Table = toml::from_str(
        "arch = \"bert\"\nbase = \"tiny\"\nlayers = 2\ninit_layers = [0, 2]\nfreeze_layers = 1",
    )
    .unwrap();
    let student = build_model(
        &ModelSpec::parse(&t).unwrap(),
        Head::Classify(2),
        m.path(),
        5,
        &Device::Cpu,
    )
    .unwrap();
    let tw = distill_core::network::varmap_tensors(teacher.varmap()).unwrap();
    let sw = distill_core::network::varmap_tensors(student.varmap()).unwrap();
    let same = |a: &str, b: &str| {
        (tw[a].clone() - sw[b].clone())
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            == 0.0
    };
    assert!(same(
        "encoder.layer.2.output.dense.weight",
        "encoder.layer.1.output.dense.weight"
    ));
    assert!(same(
        "encoder.layer.0.attention.self.query.weight",
        "encoder.layer.0.attention.self.query.weight"
    ));
    assert!(same(
        "embeddings.word_embeddings.weight",
        "embeddings.word_embeddings.weight"
    ));
    assert!(
        sw.contains_key("classifier.weight")
            && !sw.contains_key("encoder.layer.2.output.dense.weight")
    );
    // freeze_layers = 1: no gradient reaches the embeddings or layer 0; layer 1 and the head get one
    let out = student
        .forward(&ids(&[&[1, 4, 2]]), Mode::Train { seed: 1 })
        .unwrap();
    let grads = out
        .logits
        .sqr()
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let data = student.varmap().data().lock().unwrap();
    let has = |n: &str| grads.get(data[n].as_tensor()).is_some();
    assert!(
        !has("embeddings.word_embeddings.weight") && !has("encoder.layer.0.output.dense.weight")
    );
    assert!(has("encoder.layer.1.output.dense.weight") && has("classifier.weight"));
    drop(data);
    // asking for a layer the file does not have
    let t: toml::Table =
        toml::from_str("arch = \"bert\"\nbase = \"tiny\"\nlayers = 2\ninit_layers = [0, 5]")
            .unwrap();
    let e = build_model(
        &ModelSpec::parse(&t).unwrap(),
        Head::Embed,
        m.path(),
        0,
        &Device::Cpu,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        e.contains("has no layer 5") && e.contains("model.safetensors"),
        "{e}"
    );
}

/// A tiny random model saved as `tiny/model.safetensors` (the "pretrained" base) with its LayerNorm
/// weights and all biases made distinct (BERT initialises them to ones and zeros, which would tie every
/// importance score), and its tensors.
fn saved_tiny_base(seed: u64) -> (tempfile::TempDir, BTreeMap<String, Tensor>) {
    let m = tiny_models();
    let base = build_model(&spec(""), Head::Embed, m.path(), seed, &Device::Cpu).unwrap();
    {
        let data = base.varmap().data().lock().unwrap();
        for (name, var) in data.iter() {
            if name.ends_with(".bias") || name.contains("LayerNorm") {
                let v = Tensor::rand(0.5f32, 1.5, var.dims(), &Device::Cpu).unwrap();
                var.set(&v).unwrap();
            }
        }
    }
    distill_core::network::save_network(&base, &m.path().join("tiny/model.safetensors")).unwrap();
    let tw = distill_core::network::varmap_tensors(base.varmap()).unwrap();
    (m, tw)
}

/// The tensors of a pretrained student of `tiny` built from the model-table lines `extra`.
fn pretrained_student(m: &tempfile::TempDir, extra: &str) -> BTreeMap<String, Tensor> {
    let t: toml::Table =
        toml::from_str(&format!("arch = \"bert\"\nbase = \"tiny\"\n{extra}")).unwrap();
    let student = build_model(
        &ModelSpec::parse(&t).unwrap(),
        Head::Classify(2),
        m.path(),
        5,
        &Device::Cpu,
    )
    .unwrap();
    // it runs: a forward pass at the new widths
    let out = student.forward(&ids(&[&[1, 4, 2]]), Mode::Eval).unwrap();
    assert_eq!(out.logits.dims(), &[1, 2]);
    distill_core::network::varmap_tensors(student.varmap()).unwrap()
}

/// `t`'s rows `rows` and columns `cols` (all where `None`), by plain loops; a vector is one row.
fn pick(t: &Tensor, rows: Option<&[usize]>, cols: Option<&[usize]>) -> Vec<Vec<f32>> {
    let m: Vec<Vec<f32>> = match t.rank() {
        1 => t
            .to_vec1::<f32>()
            .unwrap()
            .into_iter()
            .map(|x| vec![x])
            .collect(),
        _ => t.to_vec2::<f32>().unwrap(),
    };
    let all_rows: Vec<usize> = (0..m.len()).collect();
    let all_cols: Vec<usize> = (0..m[0].len()).collect();
    rows.unwrap_or(&all_rows)
        .iter()
        .map(|&i| cols.unwrap_or(&all_cols).iter().map(|&j| m[i][j]).collect())
        .collect()
}

/// Ascending indices of the `k` largest of each consecutive block of `size` scores.
fn top_per_block(score: &[f32], size: usize, k: usize) -> Vec<usize> {
    let mut keep = Vec::new();
    for block in 0..score.len() / size {
        let mut order: Vec<usize> = (block * size..(block + 1) * size).collect();
        order.sort_by(|&i, &j| score[j].partial_cmp(&score[i]).unwrap());
        keep.extend_from_slice(&order[..k]);
    }
    keep.sort();
    keep
}

/// `‖a[j, :]‖ · ‖b[:, j]‖` for every `j`, by plain loops (`a` `[n, _]`, `b` `[_, n]`).
fn pair_norms(a: &Tensor, b: &Tensor) -> Vec<f32> {
    let (a, b) = (pick(a, None, None), pick(b, None, None));
    (0..a.len())
        .map(|j| {
            let x: f32 = a[j].iter().map(|v| v * v).sum::<f32>().sqrt();
            let y: f32 = b.iter().map(|r| r[j] * r[j]).sum::<f32>().sqrt();
            x * y
        })
        .collect()
}

#[test]
fn a_narrower_pretrained_feed_forward_keeps_the_largest_norm_neurons() {
    let (m, tw) = saved_tiny_base(7);
    let sw = pretrained_student(&m, "layers = 2\ninit_layers = [0, 2]\nintermediate = 20");
    for (s, src) in [(0usize, 0usize), (1, 2)] {
        let t = |n: &str| &tw[&format!("encoder.layer.{src}.{n}")];
        let st = |n: &str| pick(&sw[&format!("encoder.layer.{s}.{n}")], None, None);
        // the reference selection: the 20 largest ‖w_in[j]‖·‖w_out[:, j]‖ of 32, in order
        let w_in = t("intermediate.dense.weight"); // [32, 16]
        let keep = top_per_block(&pair_norms(w_in, t("output.dense.weight")), 32, 20);
        assert_eq!(
            st("intermediate.dense.weight"),
            pick(w_in, Some(&keep), None)
        );
        assert_eq!(
            st("intermediate.dense.bias"),
            pick(t("intermediate.dense.bias"), Some(&keep), None)
        );
        assert_eq!(
            st("output.dense.weight"),
            pick(t("output.dense.weight"), None, Some(&keep))
        );
        // the rest of the layer is the base's, untouched
        for n in ["attention.output.dense.weight", "output.LayerNorm.bias"] {
            assert_eq!(st(n), pick(t(n), None, None), "{n}");
        }
    }
    // wider than the source, or another number of heads, cannot come from it
    for bad in ["intermediate = 40", "hidden = 20", "hidden = 12\nheads = 3"] {
        let t: toml::Table =
            toml::from_str(&format!("arch = \"bert\"\nbase = \"tiny\"\n{bad}")).unwrap();
        let e = ModelSpec::parse(&t)
            .unwrap()
            .config(m.path())
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("init = \"random\""), "{bad}: {e}");
    }
}

#[test]
fn a_narrower_pretrained_hidden_size_keeps_the_largest_residual_dims_and_head_dims() {
    // base: hidden 16, 4 heads of 4 dims, feed-forward 32; student: hidden 12 (4 heads of 3), feed-forward 20
    let (m, tw) = saved_tiny_base(11);
    let sw = pretrained_student(
        &m,
        "layers = 2\ninit_layers = [0, 2]\nhidden = 12\nintermediate = 20",
    );
    let abs = |n: &str| {
        pick(&tw[n], None, None)
            .concat()
            .iter()
            .map(|x| x.abs())
            .collect::<Vec<f32>>()
    };
    // residual dims: the 12 largest summed |γ| over the embedding LayerNorm and the taken layers' LayerNorms
    let mut score = abs("embeddings.LayerNorm.weight");
    for src in [0, 2] {
        for ln in [
            "attention.output.LayerNorm.weight",
            "output.LayerNorm.weight",
        ] {
            let g = abs(&format!("encoder.layer.{src}.{ln}"));
            score.iter_mut().zip(g).for_each(|(s, g)| *s += g);
        }
    }
    let r = top_per_block(&score, 16, 12);
    let r = Some(r.as_slice());
    for n in [
        "word_embeddings.weight",
        "position_embeddings.weight",
        "token_type_embeddings.weight",
    ] {
        let n = format!("embeddings.{n}");
        assert_eq!(pick(&sw[&n], None, None), pick(&tw[&n], None, r), "{n}");
    }
    for n in ["LayerNorm.weight", "LayerNorm.bias"] {
        let n = format!("embeddings.{n}");
        assert_eq!(pick(&sw[&n], None, None), pick(&tw[&n], r, None), "{n}");
    }
    for (s, src) in [(0usize, 0usize), (1, 2)] {
        let t = |n: &str| &tw[&format!("encoder.layer.{src}.{n}")];
        let st = |n: &str| pick(&sw[&format!("encoder.layer.{s}.{n}")], None, None);
        let wk_t = t("attention.self.key.weight").t().unwrap();
        // per head (blocks of 4 rows), the 3 query/key dims with the largest ‖w_q[j]‖·‖w_k[j]‖, and the 3
        // value dims with the largest ‖w_v[j]‖·‖w_o[:, j]‖
        let qk = top_per_block(&pair_norms(t("attention.self.query.weight"), &wk_t), 4, 3);
        let vo = top_per_block(
            &pair_norms(
                t("attention.self.value.weight"),
                t("attention.output.dense.weight"),
            ),
            4,
            3,
        );
        let ffn = top_per_block(
            &pair_norms(t("intermediate.dense.weight"), t("output.dense.weight")),
            32,
            20,
        );
        let (qk, vo, ffn) = (
            Some(qk.as_slice()),
            Some(vo.as_slice()),
            Some(ffn.as_slice()),
        );
        let expect: [(&str, _, _); 16] = [
            ("attention.self.query.weight", qk, r),
            ("attention.self.query.bias", qk, None),
            ("attention.self.key.weight", qk, r),
            ("attention.self.key.bias", qk, None),
            ("attention.self.value.weight", vo, r),
            ("attention.self.value.bias", vo, None),
            ("attention.output.dense.weight", r, vo),
            ("attention.output.dense.bias", r, None),
            ("attention.output.LayerNorm.weight", r, None),
            ("attention.output.LayerNorm.bias", r, None),
            ("intermediate.dense.weight", ffn, r),
            ("intermediate.dense.bias", ffn, None),
            ("output.dense.weight", r, ffn),
            ("output.dense.bias", r, None),
            ("output.LayerNorm.weight", r, None),
            ("output.LayerNorm.bias", r, None),
        ];
        for (n, rows, cols) in expect {
            assert_eq!(st(n), pick(t(n), rows, cols), "layer {s} {n}");
        }
    }
}

fn t3(v: &[f32], d: (usize, usize, usize)) -> Tensor {
    Tensor::from_vec(v.to_vec(), d, &Device::Cpu).unwrap()
}

#[test]
fn hidden_cosine_counts_real_tokens_only() {
    // token 1: parallel (cos 1), token 2: orthogonal (cos 0), token 3: padding (ignored)
    let s = t3(&[1., 0., 2., 0., 0., 1., 5., 5.], (1, 4, 2));
    let t = t3(&[3., 0., 0., 1., 0., 1., -5., 5.], (1, 4, 2));
    let mask = Tensor::new(&[[1f32, 1., 1., 0.]], &Device::Cpu).unwrap();
    // tokens: (1,0)·(3,0) cos 1; (2,0)·(0,1) cos 0; (0,1)·(0,1) cos 1 → mean(1 − cos) = 1/3
    let l = masked_cosine_loss(&s, &t, &mask)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((l - 1.0 / 3.0).abs() < 1e-6, "{l}");
}

fn outputs(cls: &[(usize, &[f32])]) -> Outputs {
    let mut o = Outputs::logits(Tensor::zeros((1, 2), DType::F32, &Device::Cpu).unwrap());
    for (i, v) in cls {
        o = o
            .with_feature(
                &format!("cls.{i}"),
                FeatureKind::Vector,
                Tensor::from_vec(v.to_vec(), (1, v.len()), &Device::Cpu).unwrap(),
            )
            .unwrap();
        o = o
            .with_feature(
                &format!("hidden.{i}"),
                FeatureKind::Sequence,
                Tensor::zeros((1, 1, v.len()), DType::F32, &Device::Cpu).unwrap(),
            )
            .unwrap();
    }
    o
}

#[test]
fn pkd_layer_choice_and_value() {
    let skip = PkdParams {
        strategy: Some("skip".into()),
        teacher_layers: None,
    };
    let last = PkdParams {
        strategy: Some("last".into()),
        teacher_layers: None,
    };
    // the paper's 12 -> 6 example: skip {2,4,6,8,10}, last {7,...,11}
    assert_eq!(
        pkd_pairs(&skip, 6, 12)
            .unwrap()
            .iter()
            .map(|p| p.1)
            .collect::<Vec<_>>(),
        vec![2, 4, 6, 8, 10]
    );
    assert_eq!(
        pkd_pairs(&last, 6, 12)
            .unwrap()
            .iter()
            .map(|p| p.1)
            .collect::<Vec<_>>(),
        vec![7, 8, 9, 10, 11]
    );
    assert_eq!(pkd_pairs(&skip, 3, 6).unwrap(), vec![(1, 2), (2, 4)]);
    assert!(pkd_pairs(&skip, 1, 6).is_err());
    assert!(pkd_pairs(
        &PkdParams {
            strategy: None,
            teacher_layers: Some(vec![9])
        },
        2,
        6
    )
    .unwrap_err()
    .contains("layer 9"));
    // student layer 1 [CLS] (3, 4) vs teacher layer 3 (0, 2): normalised (0.6, 0.8) vs (0, 1):
    // 0.36 + 0.04 = 0.4
    let s = outputs(&[(1, &[3., 4.]), (2, &[1., 1.])]);
    let t = outputs(&[
        (1, &[9., 9.]),
        (2, &[9., 9.]),
        (3, &[0., 2.]),
        (4, &[1., 0.]),
        (5, &[1., 0.]),
        (6, &[1., 0.]),
    ]);
    let mut spec = LossSpec::named("pkd");
    spec.params = Some(toml::from_str("strategy = \"skip\"").unwrap());
    let loss = build(&spec, &s, &t, 0).unwrap().unwrap();
    let batch = Batch {
        inputs: Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap(),
        targets: Tensor::zeros(1, DType::U32, &Device::Cpu).unwrap(),
        indices: vec![0],
    };
    let v = loss
        .compute(&s, &t, &batch)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!((v - 0.4).abs() < 1e-6, "{v}");
    // a temperature is not a PKD field
    spec.temperature = Some(2.0);
    assert!(build(&spec, &s, &t, 0)
        .err()
        .unwrap()
        .to_string()
        .contains("does not use temperature"));
}

#[test]
fn tinybert_maps_layers_and_learns_projections_only_when_widths_differ() {
    let m = tiny_models();
    let x = ids(&[&[1, 5, 9, 2], &[1, 7, 2]]);
    let teacher = build_model(
        &spec("layers = 6"),
        Head::Classify(2),
        m.path(),
        1,
        &Device::Cpu,
    )
    .unwrap();
    let student = build_model(
        &spec("layers = 4\nhidden = 8\nintermediate = 16"),
        Head::Classify(2),
        m.path(),
        2,
        &Device::Cpu,
    )
    .unwrap();
    let (so, to) = (
        student.forward(&x, Mode::Eval).unwrap(),
        teacher.forward(&x, Mode::Eval).unwrap(),
    );
    let built = build(&LossSpec::named("tinybert"), &so, &to, 0)
        .unwrap()
        .unwrap();
    assert!(built.varmap().is_some(), "8 -> 16 needs projections");
    let n: usize = built
        .varmap()
        .unwrap()
        .all_vars()
        .iter()
        .map(|v| v.elem_count())
        .sum();
    assert_eq!(n, 2 * (8 * 16 + 16), "one W_h and one W_e");
    let batch = Batch {
        inputs: x.clone(),
        targets: Tensor::zeros(2, DType::U32, &Device::Cpu).unwrap(),
        indices: vec![0, 1],
    };
    assert!(
        built
            .compute(&so, &to, &batch)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
            > 0.0
    );
    // the same network on both sides, attention and hidden only: zero
    let mut spec2 = LossSpec::named("tinybert");
    spec2.params = Some(toml::from_str("embedding = false\nlayers = [1, 2, 3, 4, 5, 6]").unwrap());
    let same = build(&spec2, &to, &to, 0).unwrap().unwrap();
    assert!(same.varmap().is_none());
    assert_eq!(
        same.compute(&to, &to, &batch)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap(),
        0.0
    );
    // 2 heads vs 4 heads cannot compare attention maps
    let other = build_model(
        &spec("layers = 2\nheads = 2"),
        Head::Classify(2),
        m.path(),
        2,
        &Device::Cpu,
    )
    .unwrap();
    let oo = other.forward(&x, Mode::Eval).unwrap();
    let e = build(&LossSpec::named("tinybert"), &oo, &to, 0)
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("same number of heads"), "{e}");
    let mut bad = LossSpec::named("tinybert");
    bad.params = Some(toml::from_str("layers = [1, 9]").unwrap());
    let e = build(&bad, &oo, &to, 0).err().unwrap().to_string();
    assert!(e.contains("teacher layer 9 does not exist"), "{e}");
}
