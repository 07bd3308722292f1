use super::*;
use candle_core::Device;

fn t2(rows: &[[f32; 2]]) -> Tensor {
    let flat: Vec<f32> = rows.iter().flatten().copied().collect();
    Tensor::from_vec(flat, (rows.len(), 2), &Device::Cpu).unwrap()
}

fn val(t: &Tensor) -> f64 {
    t.to_dtype(DType::F64).unwrap().to_scalar::<f64>().unwrap()
}

fn zeros(dims: &[usize]) -> Tensor {
    Tensor::zeros(dims, DType::F32, &Device::Cpu).unwrap()
}

#[test]
fn kd_of_identical_logits_is_zero() -> Result<()> {
    let x = Tensor::new(
        &[[1.0f32, -2.0, 0.5, 3.0], [0.0, 0.0, 10.0, -10.0]],
        &Device::Cpu,
    )?;
    for t in [0.5, 1.0, 4.0, 20.0] {
        assert!(val(&kd_loss(&x, &x, t)?).abs() < 1e-6, "T = {t}");
    }
    // and it is positive otherwise
    assert!(val(&kd_loss(&x, &x.affine(0.5, 0.0)?, 4.0)?) > 1e-4);
    Ok(())
}

/// Two classes: softmax(z/T) = (1 − σ(Δ/T), σ(Δ/T)) with Δ = z₁ − z₀, so the loss has a closed form; for
/// large T it tends to Δ-difference² / 8 because of the T² factor (without it, the loss would vanish as 1/T²).
#[test]
fn kd_two_class_closed_form_and_t_squared_scaling() -> Result<()> {
    let (ds, dt) = (0.7f64, 2.3f64);
    let s = t2(&[[0.0, ds as f32], [1.0, 1.0 - ds as f32]]);
    let t = t2(&[[0.0, dt as f32], [1.0, 1.0 - dt as f32]]);
    let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
    let kl2 = |p: f64, q: f64| p * (p / q).ln() + (1.0 - p) * ((1.0 - p) / (1.0 - q)).ln();
    for temp in [1.0, 2.0, 4.0, 8.0] {
        // both rows give the same KL (the second is the first mirrored)
        let want = temp * temp * kl2(sigmoid(dt / temp), sigmoid(ds / temp));
        let got = val(&kd_loss(&s, &t, temp)?);
        assert!(
            (got - want).abs() < 1e-5 * want.max(1.0),
            "T={temp}: {got} vs {want}"
        );
    }
    // the limit needs f64: T²·KL is a difference of nearly equal terms of size ~1/T² there
    let limit = (dt - ds).powi(2) / 8.0;
    let (s, t) = (s.to_dtype(DType::F64)?, t.to_dtype(DType::F64)?);
    let got = val(&kd_loss(&s, &t, 200.0)?);
    assert!(
        (got - limit).abs() < 1e-3 * limit,
        "T²·KL → Δ²/8: {got} vs {limit}"
    );
    Ok(())
}

#[test]
fn ce_matches_closed_form_and_checks_targets() -> Result<()> {
    let logits = t2(&[[0.0, 0.0], [2.0, 0.0]]);
    let targets = Tensor::new(&[1u32, 0], &Device::Cpu)?;
    let want = (2f64.ln() + (1.0 + (-2f64).exp()).ln()) / 2.0;
    assert!((val(&ce_loss(&logits, &targets)?) - want).abs() < 1e-6);
    let bad = Tensor::new(&[1u32, 2], &Device::Cpu)?;
    assert!(ce_loss(&logits, &bad)
        .unwrap_err()
        .to_string()
        .contains("out of range"));
    let short = Tensor::new(&[1u32], &Device::Cpu)?;
    assert!(ce_loss(&logits, &short).is_err());
    Ok(())
}

#[test]
fn dkd_of_identical_logits_is_zero_and_confident_students_stay_finite() -> Result<()> {
    let x = Tensor::new(&[[1.0f32, -2.0, 0.5], [0.0, 3.0, -1.0]], &Device::Cpu)?;
    let y = Tensor::new(&[2u32, 1], &Device::Cpu)?;
    assert!(val(&dkd_loss(&x, &x, &y, 1.0, 8.0, 4.0)?).abs() < 1e-5);
    // p(target) rounds to 1 in f32: mdistiller's log(Σ non-target p) would be log 0
    let s = Tensor::new(&[[0.0f32, 0.0, 200.0], [0.0, 150.0, 0.0]], &Device::Cpu)?;
    let l = val(&dkd_loss(&s, &x, &y, 1.0, 8.0, 1.0)?);
    assert!(l.is_finite() && l > 0.0, "{l}");
    Ok(())
}

#[test]
fn shape_mismatches_are_errors_naming_both_shapes() {
    let a = zeros(&[4, 10]);
    let b = zeros(&[4, 9]);
    let e = kd_loss(&a, &b, 4.0).unwrap_err().to_string();
    assert!(e.contains("[4, 10]") && e.contains("[4, 9]"), "{e}");
    let e = at_loss(&zeros(&[2, 3, 4, 4]), &zeros(&[2, 3, 8, 8]), 2.0)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("[2, 3, 4, 4]") && e.contains("[2, 3, 8, 8]"),
        "{e}"
    );
    assert!(hint_loss(&a, &b).is_err());
    assert!(sp_loss(&zeros(&[4, 3]), &zeros(&[5, 3])).is_err());
    assert!(rkd_distance_loss(&zeros(&[4, 3]), &zeros(&[5, 3])).is_err());
    assert!(kd_loss(&a, &a, 0.0).is_err());
    assert!(at_loss(&zeros(&[2, 3, 4, 4]), &zeros(&[2, 3, 4, 4]), -1.0).is_err());
}

/// VID's regressor and log-scale are trainable (in the given VarMap) and receive gradients; at the start the
/// variance is `init_var`; maps get 1×1 convolutions of the right shapes.
#[test]
fn vid_trains_its_regressor_and_variance() {
    let dev = Device::Cpu;
    let s = Tensor::randn(0f32, 1.0, (4, 3, 2, 2), &dev).unwrap();
    let t = Tensor::randn(0f32, 1.0, (4, 5, 2, 2), &dev).unwrap();
    let varmap = candle_nn::VarMap::new();
    let vid = VidRegressor::new(&varmap, true, (3, 5), 1, 3.0, 7, &dev).unwrap();
    let vars = varmap.all_vars();
    assert_eq!(vars.len(), 4, "three regressor layers and the log-scale");
    let data = varmap.data().lock().unwrap();
    let scale = data["log_scale"].as_tensor().to_vec1::<f32>().unwrap();
    assert_eq!(scale.len(), 5);
    let var = (scale[0] as f64).exp().ln_1p() + VID_EPS;
    assert!((var - 3.0).abs() < 1e-5, "initial variance {var}");
    assert_eq!(data["regressor.0.weight"].as_tensor().dims(), &[5, 3, 1, 1]);
    assert_eq!(data["regressor.4.weight"].as_tensor().dims(), &[5, 5, 1, 1]);
    drop(data);
    let grads = vid.nll(&s, &t).unwrap().backward().unwrap();
    for v in &vars {
        let g = grads
            .get(v.as_tensor())
            .expect("a gradient for every VID parameter");
        assert!(val(&g.abs().unwrap().sum_all().unwrap()) > 0.0);
    }
    let vecs = candle_nn::VarMap::new();
    let vid = VidRegressor::new(&vecs, false, (3, 5), 1, 5.0, 7, &dev).unwrap();
    let out = vid
        .regress(&Tensor::zeros((2, 3), DType::F32, &dev).unwrap())
        .unwrap();
    assert_eq!(out.dims(), &[2, 5]);
}

/// The RKD angles from the Gram matrix equal the direct `[N, N, D]` unit differences (the authors' form), on
/// rows far from the origin (centring keeps f32 accurate) and with a duplicated row (its cosines are 0).
#[test]
fn rkd_angles_from_the_gram_matrix_equal_the_direct_form() {
    let dev = Device::Cpu;
    let mut x = (Tensor::randn(0f64, 1.0, (16, 50), &dev).unwrap() + 30.0).unwrap();
    let rows: Vec<Tensor> = (0..16)
        .map(|i| x.get(if i == 5 { 2 } else { i }).unwrap())
        .collect();
    x = Tensor::stack(&rows, 0).unwrap();
    let direct = {
        let diff = x
            .unsqueeze(0)
            .unwrap()
            .broadcast_sub(&x.unsqueeze(1).unwrap())
            .unwrap();
        let e = l2_normalize(&diff, 2).unwrap();
        e.matmul(&e.transpose(1, 2).unwrap().contiguous().unwrap())
            .unwrap()
    };
    for dtype in [DType::F64, DType::F32] {
        let got = rkd_angles(&x.to_dtype(dtype).unwrap()).unwrap();
        let err = (got.to_dtype(DType::F64).unwrap() - &direct)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap();
        let tol = if dtype == DType::F64 { 1e-10 } else { 1e-4 };
        assert!(val(&err) < tol, "{dtype:?}: max error {}", val(&err));
    }
    // the duplicate pair (2, 5): zero difference, zero cosines, as F.normalize gives
    let a = rkd_angles(&x).unwrap();
    assert_eq!(
        val(&a
            .get(2)
            .unwrap()
            .get(5)
            .unwrap()
            .abs()
            .unwrap()
            .sum_all()
            .unwrap()),
        0.0
    );
}
