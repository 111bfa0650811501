//! Finite-difference gradient checks: every layer's backward pass against central differences
//! of its forward pass.

use ndarray::Array2;

use super::*;
use crate::rng::Rng;

const EPS: f32 = 1e-3;

/// Analytic and numeric gradients agree to within f32 rounding of the finite difference.
fn close(analytic: f32, numeric: f64, what: &str) {
    let (a, n) = (f64::from(analytic), numeric);
    assert!((a - n).abs() <= 2e-3 + 2e-2 * a.abs().max(n.abs()), "{what}: analytic {a} vs numeric {n}");
}

fn shape() -> InputShape {
    InputShape { id_cardinalities: vec![5, 7, 3], dense_width: 4 }
}

fn batch(shape: &InputShape, rows: usize, seed: u64) -> Batch {
    let mut rng = Rng::new(seed);
    let mut batch = Batch::default();
    for _ in 0..rows {
        for &c in &shape.id_cardinalities {
            batch.ids.push(rng.below(c as usize) as i64);
        }
        batch.dense.extend((0..shape.dense_width).map(|_| rng.normal() as f32));
        batch.labels.push(if rng.f64() < 0.3 { 1.0 } else { 0.0 });
    }
    batch
}

/// Checks every dense parameter and every embedding value a batch touches.
fn check_model(model: &Model, shape: &InputShape, batch: &Batch) {
    let rows = batch.view(shape, 0..batch.rows());
    let (loss, grads) = model.loss_and_grads(rows);
    assert!((loss - model.loss(rows)).abs() < 1e-6 * loss.max(1.0), "loss_and_grads' loss differs from loss");
    let numeric_at = |perturb: &dyn Fn(&mut Model, f32), eps: f32| {
        let (mut plus, mut minus) = (model.clone(), model.clone());
        perturb(&mut plus, eps);
        perturb(&mut minus, -eps);
        (plus.loss(rows) - minus.loss(rows)) / (2.0 * f64::from(eps))
    };
    let numeric = |perturb: &dyn Fn(&mut Model, f32)| numeric_at(perturb, EPS);
    // A coordinate whose step crosses a ReLU kink for some row has no derivative there: central
    // differences at two step sizes disagree. Those are skipped (and counted); everywhere else
    // the analytic gradient must match.
    let (mut checked, mut kinks) = (0, 0);
    let mut check = |analytic: f32, perturb: &dyn Fn(&mut Model, f32), what: String| {
        let (n, half) = (numeric(perturb), numeric_at(perturb, EPS / 2.0));
        checked += 1;
        if (n - half).abs() > 1e-3 + 1e-2 * n.abs() {
            kinks += 1;
            return;
        }
        close(analytic, n, &what);
    };
    for (t, tensor) in model.dense_params().iter().enumerate() {
        for i in 0..tensor.len() {
            check(
                grads.dense[t][i],
                &|m: &mut Model, e| m.dense_params_mut()[t][i] += e,
                format!("dense tensor {t} [{i}]"),
            );
        }
    }
    let dim = model.embeddings().dim;
    let sparse = grads.sparse.merged(dim);
    assert!(!sparse.rows.is_empty());
    for (k, &row) in sparse.rows.iter().enumerate() {
        for e in 0..dim {
            let perturb = |m: &mut Model, d| m.embeddings_mut().table[row * dim + e] += d;
            check(sparse.values[k * dim + e], &perturb, format!("embedding row {row} [{e}]"));
        }
    }
    assert!(kinks * 20 <= checked, "{kinks} of {checked} coordinates sat on a kink: too many to trust the check");
    // A row no example touches has no gradient, and the loss does not depend on it.
    let untouched = (0..model.embeddings().rows()).find(|r| !sparse.rows.contains(r)).expect("some row is untouched");
    assert_eq!(numeric(&|m: &mut Model, d| m.embeddings_mut().table[untouched * dim] += d), 0.0);
}

#[test]
fn logistic_regression_gradients() {
    let shape = shape();
    let mut model = Model::new(&Architecture::Logistic, &shape, 0.2, 1);
    // Start away from zero so every term matters.
    let mut rng = Rng::new(9);
    model.embeddings_mut().table.iter_mut().for_each(|w| *w = rng.normal() as f32 * 0.5);
    model.dense_params_mut()[0].iter_mut().for_each(|w| *w = rng.normal() as f32 * 0.5);
    check_model(&model, &shape, &batch(&shape, 8, 2));
}

#[test]
fn dlrm_gradients_with_and_without_the_wide_part() {
    for wide in [false, true] {
        dlrm_gradients(wide);
    }
}

fn dlrm_gradients(wide: bool) {
    let shape = shape();
    let architecture = Architecture::Dlrm { embedding_dim: 3, bottom: vec![6], top: vec![8, 5], wide };
    let mut model = Model::new(&architecture, &shape, 0.2, 3);
    // Non-zero biases: with zero ones, a row whose hidden units are all dead sits exactly on a
    // ReLU kink, where finite differences and the (one-sided) gradient legitimately differ.
    let mut rng = Rng::new(10);
    for tensor in model.dense_params_mut() {
        tensor.iter_mut().for_each(|w| *w += 0.1 * rng.normal() as f32);
    }
    check_model(&model, &shape, &batch(&shape, 8, 4));
}

#[test]
fn mlp_gradients_with_and_without_a_final_relu() {
    for relu_last in [false, true] {
        let mut rng = Rng::new(5);
        let mlp = Mlp::new(&[4, 7, 3], relu_last, &mut rng);
        let x = Array2::from_shape_simple_fn((6, 4), || rng.normal() as f32);
        // The loss is a fixed random projection of the output: its gradient is the projection.
        let r = Array2::from_shape_simple_fn((6, 3), || rng.normal() as f32);
        let loss = |m: &Mlp, x: &Array2<f32>| f64::from((&m.forward(x.clone()).output * &r).sum());
        let trace = mlp.forward(x.clone());
        let mut grads: Vec<Vec<f32>> = mlp.params().iter().map(|p| vec![0.0; p.len()]).collect();
        let dx = mlp.backward(&trace, r.clone(), &mut grads);
        for (t, tensor) in mlp.params().iter().enumerate() {
            for (i, &g) in grads[t].iter().enumerate().take(tensor.len()) {
                let (mut plus, mut minus) = (mlp.clone(), mlp.clone());
                plus.params_mut()[t][i] += EPS;
                minus.params_mut()[t][i] -= EPS;
                let n = (loss(&plus, &x) - loss(&minus, &x)) / (2.0 * f64::from(EPS));
                close(g, n, &format!("relu_last={relu_last} tensor {t} [{i}]"));
            }
        }
        for ((r, c), &g) in dx.indexed_iter() {
            let (mut plus, mut minus) = (x.clone(), x.clone());
            plus[(r, c)] += EPS;
            minus[(r, c)] -= EPS;
            let n = (loss(&mlp, &plus) - loss(&mlp, &minus)) / (2.0 * f64::from(EPS));
            close(g, n, &format!("relu_last={relu_last} input [{r}, {c}]"));
        }
    }
}

#[test]
fn sparse_gradients_merge_in_row_order() {
    let grad = SparseGrad { rows: vec![4, 1, 4, 0], values: vec![1.0, 2.0, 10.0, 20.0, 100.0, 200.0, 5.0, 6.0] };
    let merged = grad.merged(2);
    assert_eq!(merged.rows, vec![0, 1, 4]);
    assert_eq!(merged.values, vec![5.0, 6.0, 10.0, 20.0, 101.0, 202.0]);
}

#[test]
fn predictions_of_a_batch_equal_predictions_row_by_row() {
    let shape = shape();
    let architecture = Architecture::Dlrm { embedding_dim: 4, bottom: vec![8], top: vec![8], wide: true };
    let model = Model::new(&architecture, &shape, 0.1, 7);
    let batch = batch(&shape, 32, 8);
    let all = model.predict(batch.view(&shape, 0..32));
    for (r, &batched) in all.iter().enumerate() {
        let one = model.predict(batch.view(&shape, r..r + 1));
        assert!((one[0] - batched).abs() <= 1e-6, "row {r}: {} alone vs {batched} in the batch", one[0]);
    }
}
