//! The loss library against independent numpy references and finite differences.
//!
//! * `fixtures/losses/reference.json` is written by `fixtures/losses/make_reference.py`, a float64 numpy
//!   re-implementation of each loss after its authors' code; every case is recomputed here in f32 and f64.
//! * Every loss function's gradient with respect to the student input is checked against central finite
//!   differences in f64, on every reference case; for the methods added with the methods table (PKT, NST,
//!   DIST, logit standardisation, VID, CRD, OFD, ReviewKD) the script also records its own central-difference
//!   gradient of its numpy forward, which candle's autograd must match.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor, Var};
use distill_core::losses::{
    at_loss, build_core_loss, ce_loss, crd_loss, dist_loss, dkd_loss, hcl_loss, hint_loss, kd_loss,
    log_softmax, ls_kd_loss, nst_loss, ofd_loss, ofd_margin, pkt_loss, rkd_angle_loss,
    rkd_distance_loss, sp_loss, vid_nll, LossSpec, ReviewFusion,
};
use distill_core::{Batch, FeatureKind, Outputs, Result};
use serde_json::Value;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/losses/reference.json"
);

/// Every loss function of the library, by the name the fixture uses.
const LOSS_FUNCTIONS: &[&str] = &[
    "kd",
    "ce",
    "dkd",
    "hint",
    "at",
    "sp",
    "rkd_distance",
    "rkd_angle",
    "pkt",
    "nst",
    "dist",
    "ls_kd",
    "vid",
    "vid_log_scale",
    "crd",
    "crd_teacher",
    "ofd",
    "hcl",
    "reviewkd",
    "reviewkd_deep",
];

struct Case {
    name: String,
    loss: String,
    student: String,
    teacher: Option<String>,
    params: serde_json::Map<String, Value>,
    value: f64,
    /// The script's gradient with respect to the student input (flattened), where it recorded one.
    grad: Option<Vec<f64>>,
}

impl Case {
    fn param(&self, key: &str) -> f64 {
        self.params
            .get(key)
            .and_then(Value::as_f64)
            .unwrap_or_else(|| panic!("case {}: no parameter `{key}`", self.name))
    }

    /// A parameter naming one of the fixture's inputs.
    fn input_param(&self, key: &str) -> &str {
        self.params
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("case {}: no input parameter `{key}`", self.name))
    }
}

struct Fixture {
    inputs: BTreeMap<String, (Vec<usize>, Vec<f64>)>,
    targets: Vec<u32>,
    cases: Vec<Case>,
}

impl Fixture {
    fn load() -> Self {
        let text = std::fs::read_to_string(FIXTURE).unwrap_or_else(|e| panic!("{FIXTURE}: {e}"));
        let json: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{FIXTURE}: {e}"));
        let inputs = json["inputs"]
            .as_object()
            .expect("inputs")
            .iter()
            .map(|(k, v)| {
                let shape = v["shape"]
                    .as_array()
                    .expect("shape")
                    .iter()
                    .map(|d| d.as_u64().expect("dim") as usize)
                    .collect::<Vec<_>>();
                let data = v["data"]
                    .as_array()
                    .expect("data")
                    .iter()
                    .map(|x| x.as_f64().expect("number"))
                    .collect::<Vec<_>>();
                assert_eq!(shape.iter().product::<usize>(), data.len(), "input {k}");
                (k.clone(), (shape, data))
            })
            .collect();
        let targets = json["targets"]
            .as_array()
            .expect("targets")
            .iter()
            .map(|x| x.as_u64().expect("target") as u32)
            .collect();
        let cases = json["cases"]
            .as_array()
            .expect("cases")
            .iter()
            .map(|c| Case {
                name: c["name"].as_str().expect("name").to_string(),
                loss: c["loss"].as_str().expect("loss").to_string(),
                student: c["student"].as_str().expect("student").to_string(),
                teacher: c["teacher"].as_str().map(str::to_string),
                params: c["params"].as_object().cloned().unwrap_or_default(),
                value: c["value"].as_f64().expect("value"),
                grad: c["grad"].as_array().map(|g| {
                    g.iter()
                        .map(|x| x.as_f64().expect("gradient component"))
                        .collect()
                }),
            })
            .collect();
        Self {
            inputs,
            targets,
            cases,
        }
    }

    fn tensor(&self, name: &str, dtype: DType) -> Tensor {
        let (shape, data) = &self.inputs[name];
        Tensor::from_vec(data.clone(), shape.as_slice(), &Device::Cpu)
            .and_then(|t| t.to_dtype(dtype))
            .unwrap()
    }

    fn targets(&self) -> Tensor {
        Tensor::new(self.targets.as_slice(), &Device::Cpu).unwrap()
    }

    fn teacher(&self, case: &Case, dtype: DType) -> Option<Tensor> {
        case.teacher.as_deref().map(|t| self.tensor(t, dtype))
    }
}

/// The loss of `case` with `student` as the student input (`fx` holds the inputs a case names in its
/// parameters).
fn eval(
    fx: &Fixture,
    case: &Case,
    student: &Tensor,
    teacher: Option<&Tensor>,
    targets: &Tensor,
) -> Result<Tensor> {
    let t = || teacher.expect("teacher input");
    let input = |key: &str| fx.tensor(case.input_param(key), student.dtype());
    match case.loss.as_str() {
        "kd" => kd_loss(student, t(), case.param("t")),
        "ce" => ce_loss(student, targets),
        "dkd" => dkd_loss(
            student,
            t(),
            targets,
            case.param("alpha"),
            case.param("beta"),
            case.param("t"),
        ),
        "hint" => hint_loss(student, t()),
        "at" => at_loss(student, t(), case.param("p")),
        "sp" => sp_loss(student, t()),
        "rkd_distance" => rkd_distance_loss(student, t()),
        "rkd_angle" => rkd_angle_loss(student, t()),
        "pkt" => pkt_loss(student, t()),
        "nst" => nst_loss(student, t()),
        "dist" => dist_loss(
            student,
            t(),
            case.param("beta"),
            case.param("gamma"),
            case.param("t"),
        ),
        "ls_kd" => ls_kd_loss(student, t(), case.param("t")),
        "vid" => vid_nll(student, t(), &input("log_scale"), 1, case.param("eps")),
        "vid_log_scale" => vid_nll(&input("mean"), t(), student, 1, case.param("eps")),
        // the student's embedding varies; then the teacher's (its embedding head trains too)
        "crd" | "crd_teacher" => {
            let (e_s, e_t) = if case.loss == "crd" {
                (student, t())
            } else {
                (t(), student)
            };
            crd_loss(
                e_s,
                e_t,
                &input("pos_s"),
                &input("pos_t"),
                &input("neg_s"),
                &input("neg_t"),
                case.param("t"),
                case.param("z_s"),
                case.param("z_t"),
                case.param("n_data") as usize,
            )
        }
        "ofd" => ofd_loss(student, t(), &input("margin")),
        "hcl" => hcl_loss(&[student.clone(), input("s2")], &[t().clone(), input("t2")]),
        // the fusion with the script's weights; the shallow stage varies, then the deep one
        "reviewkd" | "reviewkd_deep" => {
            let fusion = review_fusion(fx);
            if case.loss == "reviewkd" {
                fusion.loss(&[student.clone(), input("s2")], &[t().clone(), input("t2")])
            } else {
                fusion.loss(&[input("s1"), student.clone()], &[input("t1"), t().clone()])
            }
        }
        other => panic!("case {}: unknown loss `{other}`", case.name),
    }
}

/// ReviewKD's fusion for the fixture's two stages (student widths 3 and 5, teacher widths 4 and 6, 3 mid
/// channels), its parameters overwritten with the script's `review.*` inputs.
fn review_fusion(fx: &Fixture) -> ReviewFusion {
    let vm = candle_nn::VarMap::new();
    let fusion = ReviewFusion::new(&vm, &[3, 5], &[4, 6], 3, 0, &Device::Cpu).unwrap();
    let data = vm.data().lock().unwrap();
    let mut set = 0;
    for (name, var) in data.iter() {
        let value = fx.tensor(&format!("review.{name}"), DType::F32);
        var.set(&value)
            .unwrap_or_else(|e| panic!("review.{name}: {e}"));
        set += 1;
    }
    assert_eq!(set, 14, "every fusion parameter comes from the script");
    drop(data);
    fusion
}

fn scalar_f64(t: &Tensor) -> f64 {
    assert_eq!(t.rank(), 0, "a loss must be a scalar, got {:?}", t.dims());
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

fn check_values(dtype: DType, tol: f64) {
    let fx = Fixture::load();
    let targets = fx.targets();
    let mut failures = Vec::new();
    for case in &fx.cases {
        let s = fx.tensor(&case.student, dtype);
        let t = fx.teacher(case, dtype);
        let loss = eval(&fx, case, &s, t.as_ref(), &targets).unwrap();
        assert_eq!(loss.dtype(), dtype, "case {}", case.name);
        let got = scalar_f64(&loss);
        let err = (got - case.value).abs();
        let allowed = tol * case.value.abs().max(1.0);
        println!(
            "{:24} {dtype:?} got {got:.12e} want {:.12e} err {err:.2e}",
            case.name, case.value
        );
        if err.is_nan() || err > allowed {
            failures.push(format!(
                "{}: got {got}, numpy says {} (|diff| {err:e} > {allowed:e})",
                case.name, case.value
            ));
        }
    }
    assert!(failures.is_empty(), "{dtype:?}:\n{}", failures.join("\n"));
}

#[test]
fn values_match_numpy_reference_f32() {
    check_values(DType::F32, 1e-5);
}

#[test]
fn values_match_numpy_reference_f64() {
    check_values(DType::F64, 1e-10);
}

#[test]
fn reference_covers_every_loss_function() {
    let fx = Fixture::load();
    for f in LOSS_FUNCTIONS {
        assert!(
            fx.cases.iter().any(|c| c.loss == *f),
            "no reference case for `{f}`"
        );
    }
    assert!(fx.cases.len() >= 20, "only {} cases", fx.cases.len());
    // the reference values are not degenerate (a loss returning 0 would pass nothing)
    assert!(fx
        .cases
        .iter()
        .all(|c| c.value.is_finite() && c.value > 1e-4));
}

/// Analytic gradient of `f` at `x0` (via candle autograd) and central differences with step `h`.
fn grads(f: &dyn Fn(&Tensor) -> Result<Tensor>, x0: &Tensor, h: f64) -> (Vec<f64>, Vec<f64>) {
    let var = Var::from_tensor(x0).unwrap();
    let loss = f(var.as_tensor()).unwrap();
    let g = loss.backward().unwrap();
    let analytic: Vec<f64> = g
        .get(var.as_tensor())
        .expect("no gradient reached the student input")
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let base: Vec<f64> = x0
        .to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let at = |v: Vec<f64>| {
        let t = Tensor::from_vec(v, x0.shape(), x0.device())
            .unwrap()
            .to_dtype(x0.dtype())
            .unwrap();
        scalar_f64(&f(&t).unwrap())
    };
    let numeric = (0..base.len())
        .map(|i| {
            let mut plus = base.clone();
            plus[i] += h;
            let mut minus = base.clone();
            minus[i] -= h;
            (at(plus) - at(minus)) / (2.0 * h)
        })
        .collect();
    (analytic, numeric)
}

/// Largest `|analytic − numeric|`, relative to the gradient's scale (its largest component).
fn grad_error(analytic: &[f64], numeric: &[f64]) -> f64 {
    assert_eq!(analytic.len(), numeric.len());
    let scale = numeric.iter().fold(1e-30f64, |m, g| m.max(g.abs()));
    analytic
        .iter()
        .zip(numeric)
        .map(|(a, n)| (a - n).abs() / scale)
        // NaN-propagating maximum (f64::max would skip NaNs)
        .fold(0.0, |m, e| if e.is_nan() || e > m { e } else { m })
}

const FD_STEP: f64 = 1e-6;
const FD_TOL: f64 = 1e-6;

#[test]
fn gradients_match_finite_differences_for_every_case() {
    let fx = Fixture::load();
    let targets = fx.targets();
    let mut failures = Vec::new();
    let mut checked = std::collections::BTreeSet::new();
    for case in &fx.cases {
        let s = fx.tensor(&case.student, DType::F64);
        let t = fx.teacher(case, DType::F64);
        let f = |x: &Tensor| eval(&fx, case, x, t.as_ref(), &targets);
        let (analytic, numeric) = grads(&f, &s, FD_STEP);
        let err = grad_error(&analytic, &numeric);
        let max_g = numeric.iter().fold(0.0f64, |m, g| m.max(g.abs()));
        println!("{:24} max|grad| {max_g:.3e} rel err {err:.2e}", case.name);
        assert!(max_g > 1e-6, "case {}: vanishing gradient", case.name);
        assert!(analytic.iter().all(|g| g.is_finite()), "case {}", case.name);
        if err.is_nan() || err > FD_TOL {
            failures.push(format!("{}: relative gradient error {err:e}", case.name));
        }
        checked.insert(case.loss.clone());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    for f in LOSS_FUNCTIONS {
        assert!(checked.contains(*f), "gradient of `{f}` not checked");
    }
}

/// candle's autograd against the gradient the numpy script computed from its own forward (central
/// differences in float64), for every case that records one (the methods of the methods table).
#[test]
fn gradients_match_numpy_reference() {
    let fx = Fixture::load();
    let targets = fx.targets();
    let mut failures = Vec::new();
    let mut checked = std::collections::BTreeSet::new();
    for case in fx.cases.iter().filter(|c| c.grad.is_some()) {
        let want = case.grad.as_ref().unwrap();
        let var = Var::from_tensor(&fx.tensor(&case.student, DType::F64)).unwrap();
        let t = fx.teacher(case, DType::F64);
        let loss = eval(&fx, case, var.as_tensor(), t.as_ref(), &targets).unwrap();
        let got: Vec<f64> = loss
            .backward()
            .unwrap()
            .get(var.as_tensor())
            .expect("no gradient reached the student input")
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let err = grad_error(&got, want);
        println!("{:24} numpy gradient rel err {err:.2e}", case.name);
        if err.is_nan() || err > 1e-6 {
            failures.push(format!("{}: relative gradient error {err:e}", case.name));
        }
        checked.insert(case.loss.as_str());
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    for f in [
        "pkt",
        "nst",
        "dist",
        "ls_kd",
        "vid",
        "vid_log_scale",
        "crd",
        "crd_teacher",
        "ofd",
        "hcl",
        "reviewkd",
        "reviewkd_deep",
    ] {
        assert!(checked.contains(f), "no numpy gradient for `{f}`");
    }
}

/// OFD's margins against the script's transcription of the authors' `get_margin_from_BN` (both branches: the
/// truncated-normal mean and `-3 std` where almost nothing is negative).
#[test]
fn ofd_margins_match_the_authors_formula() {
    let fx = Fixture::load();
    for (mean, std, margin) in [
        ("ofd_bn_mean", "ofd_bn_std", "ofd_margin"),
        ("ofd_bn_mean5", "ofd_bn_std5", "ofd_margin5"),
    ] {
        let (m, s, want) = (&fx.inputs[mean].1, &fx.inputs[std].1, &fx.inputs[margin].1);
        assert!(
            want.contains(&-3.0),
            "{margin}: the -3 std branch is not exercised"
        );
        for i in 0..m.len() {
            let got = ofd_margin(m[i], s[i]);
            assert!(
                (got - want[i]).abs() <= 1e-13 * want[i].abs().max(1.0),
                "{margin}[{i}]: {got} vs {}",
                want[i]
            );
        }
    }
}

/// The check above is not vacuous: a KD whose log-softmax normaliser is (wrongly) detached has the same
/// value but a wrong gradient, and the same comparison flags it.
#[test]
fn gradient_check_detects_a_wrong_gradient() {
    let fx = Fixture::load();
    let s = fx.tensor("logits_s", DType::F64);
    let t = fx.tensor("logits_t", DType::F64);
    let temp = 4.0;
    let buggy = |x: &Tensor| -> Result<Tensor> {
        let z = x.affine(1.0 / temp, 0.0)?;
        let lse = (&z - log_softmax(&z, 1)?)?.detach(); // the bug: no gradient through log Σ exp
        let log_q = (&z - &lse)?;
        let log_p = log_softmax(&t.affine(1.0 / temp, 0.0)?, 1)?;
        let kl = log_p.exp()?.mul(&(&log_p - &log_q)?)?.sum_all()?;
        Ok(kl.affine(temp * temp / x.dim(0)? as f64, 0.0)?)
    };
    let good = |x: &Tensor| kd_loss(x, &t, temp);
    assert!((scalar_f64(&buggy(&s).unwrap()) - scalar_f64(&good(&s).unwrap())).abs() < 1e-12);
    let (analytic, numeric) = grads(&buggy, &s, FD_STEP);
    let err = grad_error(&analytic, &numeric);
    assert!(
        err > 100.0 * FD_TOL,
        "wrong gradient not detected (error {err:e})"
    );
    let (analytic, numeric) = grads(&good, &s, FD_STEP);
    assert!(grad_error(&analytic, &numeric) <= FD_TOL);
}

/// The f32 path (what training uses) gives the same gradients as the f64 path.
#[test]
fn f32_gradients_agree_with_f64() {
    let fx = Fixture::load();
    let targets = fx.targets();
    for case in &fx.cases {
        let g = |dtype: DType| -> Vec<f64> {
            let var = Var::from_tensor(&fx.tensor(&case.student, dtype)).unwrap();
            let t = fx.teacher(case, dtype);
            let loss = eval(&fx, case, var.as_tensor(), t.as_ref(), &targets).unwrap();
            let grads = loss.backward().unwrap();
            grads
                .get(var.as_tensor())
                .unwrap()
                .to_dtype(DType::F64)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap()
        };
        let err = grad_error(&g(DType::F32), &g(DType::F64));
        assert!(
            err <= 1e-4,
            "case {}: f32 vs f64 gradient error {err:e}",
            case.name
        );
    }
}

fn all_finite(t: &Tensor) -> bool {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
        .iter()
        .all(|x| x.is_finite())
}

/// Zero distances (identical samples) and all-zero maps must not turn into NaN gradients (sqrt'(0)).
#[test]
fn degenerate_inputs_give_finite_gradients() {
    let dev = Device::Cpu;
    let s = Tensor::new(
        &[
            [1.0f32, 2.0, 3.0],
            [1.0, 2.0, 3.0],
            [0.5, -1.0, 2.0],
            [0.0, 0.0, 0.0],
        ],
        &dev,
    )
    .unwrap();
    let t = Tensor::new(&[[0.3f32, 1.0], [2.0, -1.0], [1.0, 1.0], [-0.5, 0.2]], &dev).unwrap();
    type LossFn = fn(&Tensor, &Tensor) -> Result<Tensor>;
    let fns: [(&str, LossFn); 3] = [
        ("rkd_distance", rkd_distance_loss),
        ("rkd_angle", rkd_angle_loss),
        ("sp", sp_loss),
    ];
    for (name, f) in fns {
        let var = Var::from_tensor(&s).unwrap();
        let loss = f(var.as_tensor(), &t).unwrap();
        assert!(all_finite(&loss), "{name}: loss {loss}");
        let g = loss.backward().unwrap();
        let g = g.get(var.as_tensor()).unwrap();
        assert!(all_finite(g), "{name}: gradient {g}");
    }
    // an all-zero student map: its attention vector is zero (normalised with eps), gradient finite
    let zero = Var::from_tensor(&Tensor::zeros((2, 3, 4, 4), DType::F32, &dev).unwrap()).unwrap();
    let tm = Tensor::ones((2, 5, 4, 4), DType::F32, &dev).unwrap();
    for p in [1.0, 2.0, 3.0] {
        let loss = at_loss(zero.as_tensor(), &tm, p).unwrap();
        let g = loss.backward().unwrap();
        assert!(
            all_finite(&loss) && all_finite(g.get(zero.as_tensor()).unwrap()),
            "at p={p}"
        );
    }
    // identical rows for RKD on a single sample batch: defined (zero), not NaN
    let one = Tensor::new(&[[1.0f32, 2.0]], &dev).unwrap();
    assert_eq!(scalar_f64(&rkd_distance_loss(&one, &one).unwrap()), 0.0);
    assert_eq!(scalar_f64(&rkd_angle_loss(&one, &one).unwrap()), 0.0);
}

fn batch(fx: &Fixture) -> Batch {
    Batch {
        inputs: Tensor::zeros((4, 1), DType::F32, &Device::Cpu).unwrap(),
        targets: fx.targets(),
        indices: vec![0, 1, 2, 3],
    }
}

/// The `DistillLoss` structs built from specs compute the same values as the functions (and the numpy
/// reference), reading the right outputs.
#[test]
fn built_losses_match_the_reference() {
    let fx = Fixture::load();
    let f32t = |n: &str| fx.tensor(n, DType::F32);
    let student = Outputs::logits(f32t("logits_s"))
        .with_feature("map", FeatureKind::Map, f32t("map_s"))
        .unwrap()
        .with_feature("map6", FeatureKind::Map, f32t("map_s6"))
        .unwrap()
        .with_feature("emb", FeatureKind::Vector, f32t("vec_s"))
        .unwrap();
    let teacher = Outputs::logits(f32t("logits_t"))
        .with_feature("map", FeatureKind::Map, f32t("map_t"))
        .unwrap()
        .with_feature("emb", FeatureKind::Vector, f32t("vec_t"))
        .unwrap();
    let value = |name: &str| fx.cases.iter().find(|c| c.name == name).unwrap().value;
    let b = batch(&fx);
    let run = |spec: LossSpec| -> f64 {
        let loss = build_core_loss(&spec, &student, &teacher, 7, None)
            .unwrap()
            .unwrap_or_else(|| panic!("{} is a core loss", spec.name));
        assert_eq!(loss.name(), spec.name);
        scalar_f64(&loss.compute(&student, &teacher, &b).unwrap())
    };
    let close = |got: f64, want: f64, what: &str| {
        assert!(
            (got - want).abs() <= 1e-5 * want.abs().max(1.0),
            "{what}: got {got}, want {want}"
        );
    };
    let mut kd = LossSpec::named("kd");
    kd.temperature = Some(4.0);
    close(run(kd), value("kd_T4"), "kd");
    close(run(LossSpec::named("ce")), value("ce"), "ce");
    let mut dkd = LossSpec::named("dkd");
    (dkd.alpha, dkd.beta, dkd.temperature) = (Some(0.5), Some(2.0), Some(1.0));
    close(run(dkd), value("dkd_a0.5_b2_T1"), "dkd");
    let mut hint = LossSpec::named("hint");
    (hint.student_feature, hint.teacher_feature) = (Some("map6".into()), Some("map".into()));
    close(run(hint), value("hint_map"), "hint");
    let mut at = LossSpec::named("at");
    (at.student_feature, at.teacher_feature, at.p) =
        (Some("map".into()), Some("map".into()), Some(3.0));
    close(run(at), value("at_p3"), "at");
    let mut sp = LossSpec::named("sp");
    (sp.student_feature, sp.teacher_feature) = (Some("emb".into()), Some("emb".into()));
    close(run(sp), value("sp_vec"), "sp");
    let mut rkd = LossSpec::named("rkd");
    (rkd.student_feature, rkd.teacher_feature) = (Some("emb".into()), Some("emb".into()));
    close(
        run(rkd),
        25.0 * value("rkd_distance_vec") + 50.0 * value("rkd_angle_vec"),
        "rkd on features",
    );
    let mut rkd = LossSpec::named("rkd");
    (rkd.distance_weight, rkd.angle_weight) = (Some(1.0), Some(0.0));
    close(run(rkd), value("rkd_distance_logits"), "rkd on logits");
}

/// A hint adapter is trained with the student: gradients reach its weight and bias and the student feature.
#[test]
fn hint_adapter_receives_gradients() {
    let fx = Fixture::load();
    let dev = Device::Cpu;
    let s = Var::from_tensor(&fx.tensor("map_s", DType::F32)).unwrap();
    let student = Outputs::logits(Tensor::zeros((4, 5), DType::F32, &dev).unwrap())
        .with_feature("layer2", FeatureKind::Map, s.as_tensor().clone())
        .unwrap();
    let teacher = Outputs::logits(Tensor::zeros((4, 5), DType::F32, &dev).unwrap())
        .with_feature("layer3", FeatureKind::Map, fx.tensor("map_t", DType::F32))
        .unwrap();
    let mut spec = LossSpec::named("hint");
    (spec.student_feature, spec.teacher_feature) = (Some("layer2".into()), Some("layer3".into()));
    let loss = build_core_loss(&spec, &student, &teacher, 3, None)
        .unwrap()
        .unwrap();
    assert!(loss.uses_features() && loss.uses_teacher());
    let vm = loss.varmap().expect("3 -> 6 channels needs an adapter");
    let value = loss.compute(&student, &teacher, &batch(&fx)).unwrap();
    let grads = value.backward().unwrap();
    let vars = vm.all_vars();
    assert_eq!(vars.len(), 2);
    for v in vars.iter().chain(std::iter::once(&s)) {
        let g = grads.get(v.as_tensor()).expect("gradient");
        let norm = scalar_f64(&g.sqr().unwrap().sum_all().unwrap());
        assert!(norm > 0.0 && norm.is_finite(), "{:?}", v.dims());
    }
}
