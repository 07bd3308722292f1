//! The core losses as a recipe builds them: option checks, the one-line errors naming the loss, feature
//! lookups and shapes (moved out of `src/` to keep distill-core's source small; it uses the public API only).

use candle_core::{DType, Device, Tensor};
use distill_core::losses::*;
use distill_core::{Batch, FeatureKind, Outputs, Result};

fn val(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

fn zeros(dims: &[usize]) -> Tensor {
    Tensor::zeros(dims, DType::F32, &Device::Cpu).unwrap()
}

fn outputs(features: &[(&str, FeatureKind, &[usize])]) -> Outputs {
    let mut o = Outputs::logits(zeros(&[4, 10]));
    for (name, kind, dims) in features {
        o = o.with_feature(name, *kind, zeros(dims)).unwrap();
    }
    o
}

/// A batch of four samples (zero inputs, class 0), indices 0..4 of the training split.
fn batch4() -> Batch {
    Batch {
        inputs: zeros(&[4, 1]),
        targets: Tensor::zeros(4, DType::U32, &Device::Cpu).unwrap(),
        indices: vec![0, 1, 2, 3],
    }
}

fn spec(name: &str, sf: Option<&str>, tf: Option<&str>) -> LossSpec {
    let mut s = LossSpec::named(name);
    s.student_feature = sf.map(str::to_string);
    s.teacher_feature = tf.map(str::to_string);
    s
}

fn build_err(spec: &LossSpec, s: &Outputs, t: &Outputs) -> String {
    match build_core_loss(spec, s, t, 0, None) {
        Ok(_) => panic!("spec {spec:?} should be rejected"),
        Err(e) => {
            eprintln!("{}: {e}", spec.name);
            e.to_string()
        }
    }
}

#[test]
fn non_core_names_are_left_to_plugins() {
    let o = outputs(&[]);
    assert!(build_core_loss(&LossSpec::named("crf_kd"), &o, &o, 0, None)
        .unwrap()
        .is_none());
}

#[test]
fn every_core_loss_builds_with_defaults() {
    let s = outputs(&[("feat", FeatureKind::Map, &[4, 3, 4, 4])]);
    let t = outputs(&[("feat", FeatureKind::Map, &[4, 6, 4, 4])]);
    for name in CORE_LOSSES {
        let feature_loss = matches!(*name, "hint" | "at" | "sp" | "nst" | "vid" | "ofd");
        let sp = if feature_loss {
            spec(name, Some("feat"), Some("feat"))
        } else if *name == "reviewkd" {
            let mut sp = LossSpec::named(name);
            sp.student_features = Some(vec!["feat".into()]);
            sp.teacher_features = Some(vec!["feat".into()]);
            sp
        } else {
            LossSpec::named(name)
        };
        let loss = build_core_loss(&sp, &s, &t, 0, None).unwrap().unwrap();
        assert_eq!(loss.name(), *name);
        assert_eq!(loss.uses_teacher(), *name != "ce");
        assert_eq!(loss.uses_features(), feature_loss || *name == "reviewkd");
    }
}

#[test]
fn new_methods_reject_wrong_options_and_shapes_naming_the_loss() {
    let s = outputs(&[
        ("map", FeatureKind::Map, &[4, 3, 4, 4]),
        ("vec", FeatureKind::Vector, &[4, 8]),
    ]);
    let t = outputs(&[
        ("map", FeatureKind::Map, &[4, 6, 2, 2]),
        ("vec", FeatureKind::Vector, &[4, 5]),
    ]);
    let mut sp = LossSpec::named("dist");
    sp.p = Some(2.0);
    let e = build_err(&sp, &s, &t);
    assert!(
        e.contains("`dist`") && e.contains("`p`") && e.contains("temperature, beta, gamma"),
        "{e}"
    );
    let mut sp = LossSpec::named("ls_kd");
    sp.gamma = Some(1.0);
    assert!(build_err(&sp, &s, &t).contains("`ls_kd`"));
    let mut sp = LossSpec::named("dist");
    sp.gamma = Some(-1.0);
    assert!(build_err(&sp, &s, &t).contains("`gamma` must be finite and >= 0"));
    // NST needs positions: vectors are refused; maps of different spatial sizes are refused, on one line
    let e = build_err(&spec("nst", Some("vec"), Some("vec")), &s, &t);
    assert!(e.contains("`nst`") && e.contains("Map"), "{e}");
    let e = build_err(&spec("nst", Some("map"), Some("map")), &s, &t);
    assert!(
        e.contains("`nst`") && e.contains("[4, 3, 4, 4]") && !e.contains('\n'),
        "{e}"
    );
    let e = build_err(&spec("vid", Some("map"), Some("map")), &s, &t);
    assert!(e.contains("`vid`") && !e.contains('\n'), "{e}");
    let e = build_err(&spec("pkt", Some("vec"), None), &s, &t);
    assert!(e.contains("`pkt`") && e.contains("or neither"), "{e}");
    let mut sp = spec("vid", Some("vec"), Some("vec"));
    sp.init_var = Some(0.0);
    assert!(build_err(&sp, &s, &t).contains("`init_var`"));
    // PKT and VID take features of different widths
    assert!(build_core_loss(&spec("pkt", Some("vec"), Some("map")), &s, &t, 0, None).is_ok());
    assert!(build_core_loss(&spec("vid", Some("vec"), Some("vec")), &s, &t, 0, None).is_ok());
}

#[test]
fn unknown_feature_names_list_the_available_ones() {
    let s = outputs(&[
        ("hidden1", FeatureKind::Vector, &[4, 8]),
        ("hidden2", FeatureKind::Vector, &[4, 8]),
    ]);
    let t = outputs(&[("penultimate", FeatureKind::Vector, &[4, 16])]);
    let e = build_err(&spec("hint", Some("hiden1"), Some("penultimate")), &s, &t);
    assert!(
        e.contains("hint") && e.contains("hiden1") && e.contains("hidden1, hidden2"),
        "{e}"
    );
    let e = build_err(&spec("sp", Some("hidden1"), Some("layer3")), &s, &t);
    assert!(
        e.contains("teacher") && e.contains("layer3") && e.contains("penultimate"),
        "{e}"
    );
    let e = build_err(&spec("at", Some("x"), Some("y")), &outputs(&[]), &t);
    assert!(e.contains("no features"), "{e}");
    let e = build_err(&spec("hint", Some("hidden1"), None), &s, &t);
    assert!(
        e.contains("teacher_feature") && e.contains("required"),
        "{e}"
    );
    let e = build_err(&spec("rkd", Some("hidden1"), None), &s, &t);
    assert!(e.contains("neither"), "{e}");
}

#[test]
fn bad_temperatures_and_weights_are_rejected() {
    let o = outputs(&[]);
    for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
        for name in ["kd", "dkd"] {
            let mut s = LossSpec::named(name);
            s.temperature = Some(bad);
            let e = build_err(&s, &o, &o);
            assert!(e.contains("temperature") && e.contains(name), "{e}");
        }
    }
    let mut s = LossSpec::named("dkd");
    s.beta = Some(-8.0);
    assert!(build_err(&s, &o, &o).contains("beta"));
    let mut s = LossSpec::named("rkd");
    s.angle_weight = Some(f64::NAN);
    assert!(build_err(&s, &o, &o).contains("angle_weight"));
    let mut s = LossSpec::named("rkd");
    (s.angle_weight, s.distance_weight) = (Some(0.0), Some(0.0));
    assert!(build_err(&s, &o, &o).contains("both 0"));
}

#[test]
fn fields_that_do_not_apply_are_rejected() {
    let o = outputs(&[("f", FeatureKind::Map, &[4, 3, 4, 4])]);
    let mut s = LossSpec::named("kd");
    s.p = Some(2.0);
    let e = build_err(&s, &o, &o);
    assert!(
        e.contains("`p`") && e.contains("`kd`") && e.contains("temperature"),
        "{e}"
    );
    let mut s = LossSpec::named("ce");
    s.temperature = Some(4.0);
    let e = build_err(&s, &o, &o);
    assert!(
        e.contains("temperature") && e.contains("no parameters"),
        "{e}"
    );
    let mut s = spec("hint", Some("f"), Some("f"));
    s.params = Some(toml::Table::new());
    assert!(build_err(&s, &o, &o).contains("params"));
}

#[test]
fn at_rejects_mismatched_spatial_sizes_and_non_maps() {
    let s = outputs(&[
        ("layer2", FeatureKind::Map, &[4, 16, 8, 8]),
        ("emb", FeatureKind::Vector, &[4, 16]),
    ]);
    let t = outputs(&[("layer3", FeatureKind::Map, &[4, 32, 4, 4])]);
    let e = build_err(&spec("at", Some("layer2"), Some("layer3")), &s, &t);
    assert!(
        e.contains("at")
            && e.contains("layer2")
            && e.contains("layer3")
            && e.contains("[4, 16, 8, 8]")
            && e.contains("[4, 32, 4, 4]"),
        "{e}"
    );
    let e = build_err(&spec("at", Some("emb"), Some("layer3")), &s, &t);
    assert!(e.contains("emb") && e.contains("Vector"), "{e}");
    // channels may differ
    let t = outputs(&[("layer3", FeatureKind::Map, &[4, 32, 8, 8])]);
    assert!(build_core_loss(&spec("at", Some("layer2"), Some("layer3")), &s, &t, 0, None).is_ok());
}

#[test]
fn feature_kinds_and_batches_must_fit() {
    let s = outputs(&[
        ("seq", FeatureKind::Sequence, &[4, 7, 8]),
        ("emb", FeatureKind::Vector, &[4, 8]),
        ("small_batch", FeatureKind::Vector, &[2, 8]),
    ]);
    let t = outputs(&[
        ("seq", FeatureKind::Sequence, &[4, 9, 16]),
        ("emb", FeatureKind::Vector, &[4, 16]),
    ]);
    let e = build_err(&spec("hint", Some("seq"), Some("emb")), &s, &t);
    assert!(e.contains("Sequence") && e.contains("Vector"), "{e}");
    let e = build_err(&spec("hint", Some("seq"), Some("seq")), &s, &t);
    assert!(e.contains("[4, 7, 8]") && e.contains("[4, 9, 16]"), "{e}");
    let e = build_err(&spec("sp", Some("small_batch"), Some("emb")), &s, &t);
    assert!(e.contains("[2, 8]") && e.contains("batch"), "{e}");
}

#[test]
fn hint_adapter_exists_only_when_widths_differ() -> Result<()> {
    let s = outputs(&[
        ("map", FeatureKind::Map, &[4, 3, 5, 5]),
        ("emb", FeatureKind::Vector, &[4, 8]),
        ("seq", FeatureKind::Sequence, &[4, 7, 8]),
    ]);
    let t = outputs(&[
        ("map", FeatureKind::Map, &[4, 6, 5, 5]),
        ("map3", FeatureKind::Map, &[4, 3, 5, 5]),
        ("emb", FeatureKind::Vector, &[4, 12]),
        ("seq", FeatureKind::Sequence, &[4, 7, 12]),
    ]);
    let batch = batch4();
    for (sf, tf, adapter, weight_dims) in [
        ("map", "map", true, vec![6, 3, 1, 1]),
        ("emb", "emb", true, vec![12, 8]),
        ("seq", "seq", true, vec![12, 8]),
        ("map", "map3", false, vec![]),
    ] {
        let loss = build_core_loss(&spec("hint", Some(sf), Some(tf)), &s, &t, 1, None)?.unwrap();
        assert_eq!(loss.varmap().is_some(), adapter, "{sf} -> {tf}");
        if let Some(vm) = loss.varmap() {
            let data = vm.data().lock().unwrap();
            assert_eq!(data["adapter.weight"].dims(), weight_dims.as_slice());
            assert_eq!(data["adapter.bias"].dims(), &[weight_dims[0]]);
        }
        assert!(val(&loss.compute(&s, &t, &batch)?).is_finite());
    }
    let hint = Hint::new("map", "map", FeatureKind::Map, 3, 6, 1, &Device::Cpu)?;
    assert!(hint.has_adapter());
    assert_eq!(hint.adapt(&zeros(&[4, 3, 5, 5]))?.dims(), &[4, 6, 5, 5]);
    let hint = Hint::new("seq", "seq", FeatureKind::Sequence, 8, 12, 1, &Device::Cpu)?;
    assert_eq!(hint.adapt(&zeros(&[4, 7, 8]))?.dims(), &[4, 7, 12]);
    let same = Hint::new("emb", "emb", FeatureKind::Vector, 8, 8, 1, &Device::Cpu)?;
    assert!(!same.has_adapter() && same.varmap().is_none());
    // the adapter is seeded: same seed, same weights
    let w = |seed| -> Vec<f32> {
        let h = Hint::new("e", "e", FeatureKind::Vector, 8, 12, seed, &Device::Cpu).unwrap();
        let vm = h.varmap().unwrap().data().lock().unwrap()["adapter.weight"].clone();
        vm.as_tensor().flatten_all().unwrap().to_vec1().unwrap()
    };
    assert_eq!(w(5), w(5));
    assert_ne!(w(5), w(6));
    Ok(())
}

/// A recipe's CRD keys its memory by the batch's sample indices, and an index beyond the training split is
/// refused naming the loss (the state itself is tested with `distill_nn::loss::ContrastMemory`).
#[test]
fn crd_reads_the_batch_indices() {
    let s = outputs(&[("f", FeatureKind::Vector, &[4, 8])]);
    let mut sp = spec("crd", Some("f"), Some("f"));
    sp.negatives = Some(5);
    let loss = build_core_loss(&sp, &s, &s, 3, Some(10)).unwrap().unwrap();
    assert!(loss.uses_features() && loss.varmap().is_some());
    let batch = |indices: Vec<usize>| Batch {
        inputs: zeros(&[4]),
        targets: zeros(&[4]),
        indices,
    };
    assert!(val(&loss.compute(&s, &s, &batch(vec![0, 9, 4, 2])).unwrap()) > 0.0);
    let e = loss
        .compute(&s, &s, &batch(vec![0, 10, 4, 2]))
        .unwrap_err()
        .to_string();
    assert!(e.contains("crd") && e.contains("10 samples"), "{e}");
}

#[test]
fn crd_options_are_checked_once() {
    let s = outputs(&[("f", FeatureKind::Vector, &[4, 8])]);
    for (field, apply) in [
        (
            "momentum",
            (|sp: &mut LossSpec| sp.momentum = Some(1.0)) as fn(&mut LossSpec),
        ),
        ("negatives", |sp: &mut LossSpec| sp.negatives = Some(0)),
        ("embed_dim", |sp: &mut LossSpec| sp.embed_dim = Some(0)),
        ("temperature", |sp: &mut LossSpec| {
            sp.temperature = Some(0.0)
        }),
    ] {
        let mut sp = spec("crd", Some("f"), Some("f"));
        apply(&mut sp);
        let e = build_err(&sp, &s, &s);
        assert!(e.contains("crd") && e.contains(field), "{e}");
    }
    let mut sp = LossSpec::named("crd");
    sp.init_var = Some(1.0);
    let e = build_err(&sp, &s, &s);
    assert!(e.contains("init_var") && e.contains("negatives"), "{e}");
    let e = build_err(&spec("crd", Some("f"), None), &s, &s);
    assert!(e.contains("crd") && e.contains("neither"), "{e}");
}

/// OFD needs both taps, the same kind on both sides (vectors, or maps of one spatial size) and takes no
/// option; each mistake is one line naming the loss. A built OFD trains its connector on the taps.
#[test]
fn ofd_checks_its_taps_and_takes_no_options() {
    let s = outputs(&[
        ("v", FeatureKind::Vector, &[4, 8]),
        ("m", FeatureKind::Map, &[4, 3, 5, 5]),
    ]);
    let t = outputs(&[
        ("v", FeatureKind::Vector, &[4, 6]),
        ("m", FeatureKind::Map, &[4, 2, 4, 4]),
    ]);
    let one_line = |e: String| {
        assert!(!e.contains('\n') && e.contains("ofd"), "{e}");
        e
    };
    let e = one_line(build_err(&spec("ofd", Some("v"), None), &s, &t));
    assert!(e.contains("teacher_feature"), "{e}");
    let e = one_line(build_err(&spec("ofd", Some("v"), Some("m")), &s, &t));
    assert!(e.contains("Vector") && e.contains("Map"), "{e}");
    let e = one_line(build_err(&spec("ofd", Some("m"), Some("m")), &s, &t));
    assert!(
        e.contains("[4, 3, 5, 5]") && e.contains("[4, 2, 4, 4]"),
        "{e}"
    );
    let mut sp = spec("ofd", Some("v"), Some("v"));
    sp.temperature = Some(2.0);
    let e = one_line(build_err(&sp, &s, &t));
    assert!(e.contains("temperature"), "{e}");
    let loss = build_core_loss(&spec("ofd", Some("v"), Some("v")), &s, &t, 0, None)
        .unwrap()
        .unwrap();
    let vm = loss.varmap().expect("ofd keeps its connector in a VarMap");
    let names: Vec<String> = vm.data().lock().unwrap().keys().cloned().collect();
    for n in [
        "connector.0.weight",
        "connector.1.weight",
        "margin",
        "state",
    ] {
        assert!(names.iter().any(|k| k == n), "{names:?}");
    }
    let batch = batch4();
    let v = loss.compute(&s, &t, &batch).unwrap();
    assert_eq!(v.rank(), 0);
    assert!(v.to_scalar::<f32>().unwrap().is_finite());
}

/// ReviewKD takes lists of map taps, as many on each side; each mistake is one line naming the loss and the
/// field. Built, it fuses maps of different sizes and widths into the teacher's, with `mid_channels`
/// defaulting to the deepest student width (at most 512).
#[test]
fn reviewkd_checks_its_stage_lists() {
    let s = outputs(&[
        ("b1", FeatureKind::Map, &[4, 3, 6, 6]),
        ("b2", FeatureKind::Map, &[4, 5, 3, 3]),
        ("v", FeatureKind::Vector, &[4, 8]),
    ]);
    let t = outputs(&[
        ("l1", FeatureKind::Map, &[4, 4, 4, 4]),
        ("l2", FeatureKind::Map, &[4, 6, 2, 2]),
    ]);
    let rk = |sf: &[&str], tf: &[&str]| {
        let mut sp = LossSpec::named("reviewkd");
        sp.student_features = Some(sf.iter().map(|x| x.to_string()).collect());
        sp.teacher_features = Some(tf.iter().map(|x| x.to_string()).collect());
        sp
    };
    let one_line = |e: String| {
        assert!(!e.contains('\n') && e.contains("reviewkd"), "{e}");
        e
    };
    let e = one_line(build_err(&LossSpec::named("reviewkd"), &s, &t));
    assert!(
        e.contains("student_features") && e.contains("teacher_features"),
        "{e}"
    );
    let e = one_line(build_err(&rk(&["b1", "b2"], &["l1"]), &s, &t));
    assert!(e.contains("2 taps") && e.contains("1"), "{e}");
    let e = one_line(build_err(&rk(&["b1", "b3"], &["l1", "l2"]), &s, &t));
    assert!(
        e.contains("student_features = \"b3\"") && e.contains("b1, b2, v"),
        "{e}"
    );
    let e = one_line(build_err(&rk(&["b1", "v"], &["l1", "l2"]), &s, &t));
    assert!(e.contains("`v`") && e.contains("maps"), "{e}");
    let mut kd = LossSpec::named("kd");
    kd.mid_channels = Some(4);
    let e = build_err(&kd, &s, &t);
    assert!(e.contains("mid_channels") && e.contains("kd"), "{e}");
    let loss = build_core_loss(&rk(&["b1", "b2"], &["l1", "l2"]), &s, &t, 0, None)
        .unwrap()
        .unwrap();
    let vm = loss
        .varmap()
        .expect("reviewkd keeps its fusion in a VarMap");
    let dims = |n: &str| vm.data().lock().unwrap()[n].as_tensor().dims().to_vec();
    // the deepest student stage is 5 wide: 5 mid channels
    assert_eq!(dims("abfs.1.conv1.0.weight"), [5, 5, 1, 1]);
    assert_eq!(dims("abfs.0.conv2.0.weight"), [4, 5, 3, 3]);
    assert_eq!(dims("abfs.0.att_conv.0.weight"), [2, 10, 1, 1]);
    assert!(!vm
        .data()
        .lock()
        .unwrap()
        .contains_key("abfs.1.att_conv.0.weight"));
    let batch = batch4();
    let v = loss.compute(&s, &t, &batch).unwrap();
    assert!(v.to_scalar::<f32>().unwrap().is_finite());
}
