//! A broken config yields one readable report and exit status 2.

use std::process::Output;

use crate::local_stack::adrank;

fn with_config(text: &str, subcommand: &str, env: &[(&str, &str)]) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adrank.toml");
    std::fs::write(&path, text).unwrap();
    adrank(&["--config", path.to_str().unwrap(), subcommand], dir.path(), env)
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn unknown_key_wrong_type_and_bad_url_are_reported_together() {
    let text = "\
[kafka]
brokers = \"127.0.0.1:9092\"
consumer_grup = \"typo\"

[kafka.topics.clicks]
name = \"adrank-clicks\"
partitions = \"eight\"

[redis]
url = \"htp://127.0.0.1:6379\"
";
    for subcommand in ["doctor", "up", "config"] {
        let output = with_config(text, subcommand, &[]);
        let report = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{subcommand}: {report}");
        assert!(report.contains("3 problems"), "{report}");
        assert!(report.contains(":3: `kafka.consumer_grup` is not a known key"), "{report}");
        assert!(report.contains("expected one of `brokers`, `client_id`, `consumer_group`"), "{report}");
        assert!(report.contains(":7: `kafka.topics.clicks.partitions` invalid type: string \"eight\""), "{report}");
        assert!(report.contains(":10: `redis.url` `htp://127.0.0.1:6379` is not a Redis URL"), "{report}");
        assert!(!report.contains("panicked") && !report.contains("RUST_BACKTRACE"), "{report}");
        assert!(output.stdout.is_empty(), "nothing runs with a bad config");
    }
}

#[test]
fn bad_environment_overrides_are_reported_with_the_variable() {
    let output = with_config("", "config", &[("ADRANK_SERVING__LISTEN", "everywhere"), ("ADRANK_REDIS_URL", "x")]);
    let report = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{report}");
    assert!(report.contains("environment variable ADRANK_SERVING__LISTEN: `serving.listen`"), "{report}");
    assert!(report.contains("expected ip:port"), "{report}");
    assert!(report.contains("environment variable ADRANK_REDIS_URL: is not a config override"), "{report}");
}

#[test]
fn syntax_error_names_the_line() {
    let output = with_config("[kafka]\nbrokers = \n", "config", &[]);
    let report = stderr(&output);
    assert_eq!(output.status.code(), Some(2), "{report}");
    assert!(report.contains("adrank.toml:2: is not valid TOML"), "{report}");
}

#[test]
fn missing_config_file_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let output = adrank(&["--config", "/nonexistent/adrank.toml", "config"], dir.path(), &[]);
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(stderr(&output).contains("/nonexistent/adrank.toml: cannot be read"), "{}", stderr(&output));
}

#[test]
fn env_override_shows_in_the_effective_config() {
    let output =
        with_config("[kafka]\nbrokers = \"127.0.0.1:1\"\n", "config", &[("ADRANK_KAFKA__BROKERS", "127.0.0.1:2")]);
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains("brokers = \"127.0.0.1:2\""), "{stdout}");
    assert!(stdout.contains("# overridden by ADRANK_KAFKA__BROKERS"), "{stdout}");
}

#[test]
fn every_subcommand_has_help() {
    let dir = tempfile::tempdir().unwrap();
    for subcommand in ["doctor", "up", "down", "config"] {
        let output = adrank(&[subcommand, "--help"], dir.path(), &[]);
        assert!(output.status.success(), "{subcommand} --help: {}", stderr(&output));
        assert!(String::from_utf8_lossy(&output.stdout).contains("Usage: adrank"), "{subcommand}");
    }
}
