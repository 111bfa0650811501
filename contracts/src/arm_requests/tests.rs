use super::*;

const EXPOSITION: &str = r#"# TYPE adrank_serving_requests_total counter
adrank_serving_requests_total{route="rank",status="200"} 90
# TYPE adrank_serving_rollout_request_seconds histogram
adrank_serving_rollout_request_seconds_bucket{rollout="2",step="1",arm="candidate",version="7",status="2xx",le="0.001"} 10
adrank_serving_rollout_request_seconds_bucket{rollout="2",step="1",arm="candidate",version="7",status="2xx",le="0.002"} 60
adrank_serving_rollout_request_seconds_bucket{rollout="2",step="1",arm="candidate",version="7",status="2xx",le="0.004"} 99
adrank_serving_rollout_request_seconds_bucket{rollout="2",step="1",arm="candidate",version="7",status="2xx",le="+Inf"} 100
adrank_serving_rollout_request_seconds_sum{rollout="2",step="1",arm="candidate",version="7",status="2xx"} 0.2
adrank_serving_rollout_request_seconds_count{rollout="2",step="1",arm="candidate",version="7",status="2xx"} 100
adrank_serving_rollout_request_seconds_bucket{rollout="2",step="1",arm="candidate",version="7",status="5xx",le="+Inf"} 4
adrank_serving_rollout_request_seconds_count{rollout="2",step="1",arm="candidate",version="7",status="5xx"} 4
adrank_serving_rollout_request_seconds_count{rollout="2",step="1",arm="candidate",version="7",status="4xx"} 3
adrank_serving_rollout_request_seconds_count{arm="pro\"d",rollout="2",step="0",version="6",status="2xx"} 5
"#;

fn candidate() -> ArmStep {
    ArmStep { rollout: 2, step: 1, arm: "candidate".into() }
}

#[test]
fn an_exposition_reads_as_requests_errors_and_times_per_arm_and_step() {
    let arms = parse(EXPOSITION).unwrap();
    assert_eq!(arms.len(), 2, "{arms:?}");
    let arm = &arms[&candidate()];
    assert_eq!((arm.requests, arm.errors, arm.ok()), (107, 4, 100));
    assert_eq!(arm.ok_buckets, vec![(0.001, 10), (0.002, 60), (0.004, 99), (f64::INFINITY, 100)]);
    // Escaped quotes in a value, labels in any order.
    let other = ArmStep { rollout: 2, step: 0, arm: "pro\"d".into() };
    assert_eq!(arms[&other].requests, 5);
}

#[test]
fn a_malformed_line_of_the_histogram_is_named() {
    let line = r#"adrank_serving_rollout_request_seconds_count{rollout="x",step="1",arm="a",status="2xx"} 1"#;
    let error = parse(line).unwrap_err();
    assert!(error.contains("rollout that is not a number") && error.contains(line), "{error}");
    let line = r#"adrank_serving_rollout_request_seconds_count{rollout="1",step="1",arm="a",status="2xx} 1"#;
    assert!(parse(line).unwrap_err().contains("malformed labels"));
    let line = r#"adrank_serving_rollout_request_seconds_count{rollout="1",step="1",status="2xx"} 1"#;
    assert!(parse(line).unwrap_err().contains("no `arm` label"));
    // Other metrics are not this parser's business, however they look.
    assert!(parse("adrank_serving_rollout_requests_total{broken 1").unwrap().is_empty());
}

#[test]
fn quantiles_interpolate_within_their_bucket() {
    let arm = &parse(EXPOSITION).unwrap()[&candidate()];
    // The 50th of 100 falls in (1 ms, 2 ms], 40 of the bucket's 50 in.
    assert!((arm.quantile(0.5).unwrap() - 0.0018).abs() < 1e-12);
    // The 99th is the last within 4 ms; the 100th lies beyond the last finite bound.
    assert!((arm.quantile(0.99).unwrap() - 0.004).abs() < 1e-12);
    assert_eq!(arm.quantile(1.0), Some(0.004));
    assert_eq!(ArmRequests::default().quantile(0.99), None);
}

#[test]
fn slower_than_counts_from_the_bound_at_or_above() {
    let arm = &parse(EXPOSITION).unwrap()[&candidate()];
    assert_eq!(arm.slower_than(0.0015), Some((0.002, 40)));
    assert_eq!(arm.slower_than(0.002), Some((0.002, 40)));
    assert_eq!(arm.slower_than(0.01), None);
}

#[test]
fn replicas_add_bucket_by_bucket() {
    let arm = parse(EXPOSITION).unwrap()[&candidate()].clone();
    let mut sum = arm.clone();
    sum.add(&arm);
    assert_eq!((sum.requests, sum.errors, sum.ok()), (214, 8, 200));
    assert_eq!(sum.quantile(0.5), arm.quantile(0.5));
}

#[test]
fn buckets_rise_by_a_quarter_from_half_a_millisecond_to_ten_seconds() {
    let bounds = buckets();
    assert_eq!(bounds[0], 0.0005);
    assert!(*bounds.last().unwrap() >= 10.0 && bounds.len() < 60, "{bounds:?}");
    for pair in bounds.windows(2) {
        let ratio = pair[1] / pair[0];
        assert!((1.2..1.3).contains(&ratio), "{pair:?}");
    }
}

#[test]
fn statuses_fall_in_classes() {
    assert_eq!([200, 429, 400, 500, 504].map(status_class), ["2xx", "4xx", "4xx", "5xx", "5xx"]);
}
