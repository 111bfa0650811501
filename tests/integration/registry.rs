//! The model registry on a real folder: compare-and-swap aliases, an audit log, damaged files
//! caught, imports checked by ONNX Runtime, and publishers killed mid-publish.

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use adrank_contracts::spec::{TransformStats, Transformer};
use adrank_registry::{Acquired, Change, Draft, Error, Registry, RegistryConfig};
use adrank_trainer::{
    model::{Architecture, InputShape, Model},
    onnx::export,
    publish::checked_signature,
};

pub(crate) fn registry(dir: &Path) -> Registry {
    Registry::open(&RegistryConfig { location: dir.join("registry").display().to_string() }).unwrap()
}

/// An untrained model of the shipped spec, exported, with usable statistics.
pub(crate) fn model_file(architecture: &Architecture) -> (Vec<u8>, TransformStats) {
    let spec = adrank_testkit::spec();
    let model = Model::new(architecture, &InputShape::of(&spec), 0.02, 1);
    (export(&model, &[]), TransformStats::fit(&spec, std::iter::empty()))
}

pub(crate) fn draft(onnx: &[u8], stats: &TransformStats, reason: &str) -> Draft {
    let spec = adrank_testkit::spec();
    let transformer = Transformer::new(&spec, stats).unwrap();
    Draft {
        name: "ctr".into(),
        created_by: "test".into(),
        reason: reason.into(),
        onnx: onnx.to_vec().into(),
        checkpoint: None,
        spec_version: spec.version(),
        signature: checked_signature(onnx, &adrank_testkit::onnxruntime(), &spec, &transformer).unwrap(),
        transform_stats: stats.clone(),
        training: None,
        parent: None,
        metrics: Default::default(),
        tags: Default::default(),
    }
}

#[tokio::test]
async fn aliases_change_only_by_compare_and_swap_and_every_change_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let registry = registry(dir.path());
    let (onnx, stats) = model_file(&Architecture::Logistic);
    let v1 = registry.publish(draft(&onnx, &stats, "first")).await.unwrap();
    let v2 = registry.publish(draft(&onnx, &stats, "second")).await.unwrap();
    assert_eq!((v1.version, v2.version), (1, 2));
    assert_eq!(v1.onnx.sha256, v2.onnx.sha256, "the same bytes are stored once");

    let change = |expected_seq, alias: &str, version, why: &str| Change {
        expected_seq,
        set: vec![(alias.to_string(), version)],
        by: "tester".into(),
        reason: why.into(),
    };
    let first = registry.change("ctr", change(0, "production", Some(1), "launch")).await.unwrap();
    assert_eq!((first.seq, first.aliases.get("production")), (1, Some(&1)));

    // Two changes decided on the same state race: exactly one lands.
    let (a, b) = tokio::join!(
        registry.change("ctr", change(1, "production", Some(2), "promote")),
        registry.change("ctr", change(1, "candidate", Some(2), "try")),
    );
    assert!(a.is_ok() != b.is_ok(), "exactly one of two racing changes wins: {a:?} / {b:?}");
    let loser = if a.is_err() { a } else { b }.unwrap_err();
    assert!(matches!(loser, Error::Conflict { expected: 1, found: 2, .. }), "{loser}");

    // A stale change is refused; an alias to a missing version is refused; the state is intact.
    assert!(matches!(registry.change("ctr", change(1, "x", Some(1), "stale")).await, Err(Error::Conflict { .. })));
    let missing = registry.change("ctr", change(2, "x", Some(99), "typo")).await.unwrap_err().to_string();
    assert!(missing.contains("no version 99"), "{missing}");
    assert!(matches!(registry.change("ctr", change(2, "latest", Some(1), "")).await, Err(Error::InvalidName(_))));
    let state = registry.state("ctr").await.unwrap();
    assert_eq!(state.seq, 2);

    let history = registry.history("ctr").await.unwrap();
    assert_eq!(history.iter().map(|s| s.seq).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(history[0].change, "production: -> 1");
    assert_eq!((history[0].changed_by.as_str(), history[0].reason.as_str()), ("tester", "launch"));
    assert_eq!(registry.resolve("ctr", "latest").await.unwrap(), 2);
    assert!(registry.resolve("ctr", "nope").await.is_err());
    assert_eq!(registry.models().await.unwrap(), vec!["ctr"]);
}

#[tokio::test]
async fn a_lease_has_one_holder_is_renewed_and_is_taken_over_after_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let registry = registry(dir.path());
    let ttl = Duration::from_millis(600);
    let Acquired::Held(mut a) = registry.acquire_lease("ctr", "retrain", "a", ttl).await.unwrap() else {
        panic!("a free lease is taken")
    };
    // Held: b is told who holds it, and cannot take it.
    match registry.acquire_lease("ctr", "retrain", "b", ttl).await.unwrap() {
        Acquired::Busy(record) => assert_eq!((record.holder.as_str(), record.seq), ("a", 1)),
        Acquired::Held(_) => panic!("two holders of one lease"),
    }
    a.renew().await.unwrap();
    a.check().await.unwrap();
    // Two contenders for an expired lease: exactly one wins.
    tokio::time::sleep(ttl + Duration::from_millis(100)).await;
    assert!(a.check().await.is_err(), "an expired lease no longer checks");
    let (b, c) = tokio::join!(
        registry.acquire_lease("ctr", "retrain", "b", ttl),
        registry.acquire_lease("ctr", "retrain", "c", ttl)
    );
    let (b, c) = (b.unwrap(), c.unwrap());
    let winners = [&b, &c].iter().filter(|x| matches!(x, Acquired::Held(_))).count();
    assert_eq!(winners, 1, "{b:?} / {c:?}");
    let Acquired::Held(winner) = (if matches!(b, Acquired::Held(_)) { b } else { c }) else { unreachable!() };
    // The old holder cannot renew over the new one, and says who holds it.
    let lost = a.renew().await.unwrap_err().to_string();
    assert!(lost.contains(winner.holder()), "{lost}");
    // Released, it is free at once; renewals keep the sequence short.
    let holder = winner.holder().to_string();
    winner.release().await.unwrap();
    let Acquired::Held(mut d) = registry.acquire_lease("ctr", "retrain", "d", ttl).await.unwrap() else {
        panic!("a released lease ({holder}) is free")
    };
    for _ in 0..40 {
        d.renew().await.unwrap();
    }
    let kept = registry.record_keys("ctr", "leases/retrain").await.unwrap();
    assert!(kept.len() <= 17, "old lease records are pruned: {} kept", kept.len());
}

#[tokio::test]
async fn a_damaged_model_file_is_refused_by_its_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let registry = registry(dir.path());
    let (onnx, stats) = model_file(&Architecture::Logistic);
    let manifest = registry.publish(draft(&onnx, &stats, "v1")).await.unwrap();
    let file = dir.path().join("registry").join(&manifest.onnx.path);
    let mut bytes = std::fs::read(&file).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xFF;
    std::fs::write(&file, &bytes).unwrap();
    let error = registry.artifact(&manifest.onnx).await.unwrap_err().to_string();
    assert!(error.contains("SHA-256") && error.contains(&manifest.onnx.sha256), "{error}");
    // Publishing the same bytes again repairs the shared blob instead of trusting it.
    let again = registry.publish(draft(&onnx, &stats, "v2, same model")).await.unwrap();
    assert_eq!(again.onnx.path, manifest.onnx.path);
    assert_eq!(registry.artifact(&again.onnx).await.unwrap().len(), onnx.len());
    assert_eq!(registry.artifact(&manifest.onnx).await.unwrap().len(), onnx.len());
}

#[test]
fn an_import_must_match_the_spec_signature() {
    let spec = adrank_testkit::spec();
    let stats = TransformStats::fit(&spec, std::iter::empty());
    let transformer = Transformer::new(&spec, &stats).unwrap();
    let shape = InputShape::of(&spec);
    let fewer = InputShape { id_cardinalities: shape.id_cardinalities[1..].to_vec(), dense_width: shape.dense_width };
    let onnx = export(&Model::new(&Architecture::Logistic, &fewer, 0.02, 1), &[]);
    let error = checked_signature(&onnx, &adrank_testkit::onnxruntime(), &spec, &transformer).unwrap_err().to_string();
    assert!(error.contains("ids"), "{error}");
    let garbage = checked_signature(b"not onnx", &adrank_testkit::onnxruntime(), &spec, &transformer).unwrap_err();
    assert!(garbage.to_string().contains("cannot load"), "{garbage}");
}

#[test]
fn an_import_whose_embedding_table_is_too_small_is_refused_naming_the_feature() {
    let spec = adrank_testkit::spec();
    let stats = TransformStats::fit(&spec, std::iter::empty());
    let transformer = Transformer::new(&spec, &stats).unwrap();
    let mut shape = InputShape::of(&spec);
    // The last id feature's table holds 10 rows where the spec's ids go far higher: ids of 0
    // (every warm-up row) still work. (adrank's models keep one table with an offset per
    // feature, so only the last feature's table can run off the end; PyTorch's separate
    // `nn.Embedding` tables each can.)
    let column = shape.id_cardinalities.len() - 1;
    shape.id_cardinalities[column] = 10;
    let (name, largest) = spec.largest_ids()[column].clone();
    for architecture in
        [Architecture::Logistic, Architecture::Dlrm { embedding_dim: 4, bottom: vec![8], top: vec![8], wide: false }]
    {
        let onnx = export(&Model::new(&architecture, &shape, 0.02, 1), &[]);
        let error = checked_signature(&onnx, &adrank_testkit::onnxruntime(), &spec, &transformer).unwrap_err();
        let error = error.to_string();
        let named = format!("feature `{name}` (id column {column}) has ids up to {largest}");
        assert!(error.contains(&named), "{error}");
        assert_eq!(error.matches("has ids up to").count(), 1, "only the undersized feature is named: {error}");
    }
}

#[test]
fn publishers_killed_at_random_points_leave_complete_versions_or_none() {
    let dir = tempfile::tempdir().unwrap();
    // The full-size DLRM: a 14 MB file, so a kill often lands while it is hashed or written.
    let (onnx, stats) =
        model_file(&Architecture::Dlrm { embedding_dim: 16, bottom: vec![64], top: vec![128, 64], wide: true });
    std::fs::write(dir.path().join("model.onnx"), &onnx).unwrap();
    std::fs::write(dir.path().join("stats.json"), serde_json::to_vec(&stats).unwrap()).unwrap();
    let spec_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/features.toml");
    let import = || {
        Command::new(env!("CARGO_BIN_EXE_adrank"))
            .args(["registry", "import", "ctr", "model.onnx", "--stats", "stats.json", "--spec"])
            .arg(&spec_path)
            .current_dir(dir.path())
            .env("ADRANK_REGISTRY__LOCATION", dir.path().join("registry"))
            .env("ORT_DYLIB_PATH", adrank_testkit::onnxruntime().library_path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    // How long one import takes here, to spread the kills over it.
    let started = std::time::Instant::now();
    assert!(import().wait().unwrap().success());
    let full = started.elapsed();
    let mut seed = 0x9E37_79B9_u64;
    for _ in 0..8 {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let delay = full.mul_f64((seed >> 11) as f64 / (1u64 << 53) as f64 * 1.1);
        let mut child = import();
        std::thread::sleep(delay);
        let _ = child.kill();
        child.wait().unwrap();
    }
    assert!(import().wait().unwrap().success(), "a publisher after the killed ones works");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let registry = registry(dir.path());
    let versions = runtime.block_on(registry.versions("ctr")).unwrap();
    let numbers: Vec<u64> = versions.iter().map(|m| m.version).collect();
    assert_eq!(numbers, (1..=versions.len() as u64).collect::<Vec<_>>(), "versions are numbered without gaps");
    assert!((2..=10).contains(&versions.len()), "{numbers:?}");
    for manifest in &versions {
        let bytes = runtime.block_on(registry.artifact(&manifest.onnx)).unwrap();
        assert_eq!(bytes.len(), onnx.len(), "version {} is complete", manifest.version);
    }
    eprintln!("{} of 8 killed publishers had finished; none left a partial version", versions.len() - 2);
}

/// `adrank rollout` from start to promotion, and the refusals an operator meets on the way, each
/// naming its reason; the state lives in the registry, readable by every replica.
#[tokio::test]
async fn a_rollout_is_steered_from_the_command_line_and_audited() {
    let dir = tempfile::tempdir().unwrap();
    let registry = registry(dir.path());
    let (onnx, stats) = model_file(&Architecture::Logistic);
    registry.publish(draft(&onnx, &stats, "first")).await.unwrap();
    registry.publish(draft(&onnx, &stats, "second")).await.unwrap();
    let rollout = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_adrank"))
            .arg("rollout")
            .args(args)
            .env("ADRANK_REGISTRY__LOCATION", dir.path().join("registry"))
            .env("USER", "operator")
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        (output.status.success(), text)
    };
    // No production version yet: nothing to roll out against.
    let (ok, text) = rollout(&["start", "ctr", "2"]);
    assert!(!ok && text.contains("no production version"), "{text}");
    let first =
        Change { expected_seq: 0, set: vec![("production".into(), Some(1))], by: "t".into(), reason: "t".into() };
    registry.change("ctr", first).await.unwrap();

    let (ok, text) = rollout(&["start", "ctr", "latest", "--plan", "0,50,100", "--reason", "retrained"]);
    assert!(ok && text.contains("version 2 against 1"), "{text}");
    let (ok, text) = rollout(&["start", "ctr", "2"]);
    assert!(!ok && text.contains("promote or roll it back first"), "{text}");
    let (ok, text) = rollout(&["start", "ctr", "2", "--plan", "0,50"]);
    assert!(!ok && text.contains("does not end at 100%"), "{text}");
    assert!(rollout(&["advance", "ctr"]).0);
    let (_, status) = rollout(&["status", "ctr", "--json"]);
    let state: adrank_registry::Rollout = serde_json::from_str(&status).unwrap();
    assert_eq!((state.weight(), state.candidate, state.production), (50, 2, 1));
    assert!(rollout(&["pause", "ctr", "--reason", "too few clicks"]).0);
    let (ok, text) = rollout(&["advance", "ctr"]);
    assert!(!ok && text.contains("paused"), "{text}");
    // A decision made on an older document loses.
    let (ok, text) = rollout(&["resume", "ctr", "--expect", "2"]);
    assert!(!ok && text.contains("changed"), "{text}");
    assert!(rollout(&["resume", "ctr"]).0);
    let (ok, text) = rollout(&["promote", "ctr", "--reason", "ctr up"]);
    assert!(ok && text.contains("promoted version 2"), "{text}");
    assert_eq!(registry.state("ctr").await.unwrap().aliases["production"], 2);
    let (_, table) = rollout(&["status", "ctr"]);
    assert!(table.contains("promoted") && table.contains("100%"), "{table}");
    let (_, history) = rollout(&["history", "ctr"]);
    for expected in ["started rollout 1", "paused at 50%", "resumed at 50%", "promoted version 2", "operator", "ctr up"]
    {
        assert!(history.contains(expected), "no `{expected}` in the history:\n{history}");
    }
}
