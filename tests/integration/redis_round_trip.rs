//! A pipelined write and read through the real Redis, under the test's own key prefix.

use adrank_featurestore::online;
use adrank_testkit::redis::TestRedis;

#[tokio::test]
async fn pipelined_hash_round_trip_and_cleanup() {
    let redis = TestRedis::new().await;
    let version = online::server_version(&redis.config).await.unwrap();
    assert!(version.chars().next().is_some_and(|c| c.is_ascii_digit()), "odd version {version:?}");

    let mut connection = online::connect(&redis.config).await.unwrap();
    let key = format!("{}user:42", redis.config.key_prefix);
    let (clicks, impressions): (i64, i64) = redis::pipe()
        .atomic()
        .hincr(&key, "clicks", 1)
        .hincr(&key, "impressions", 10)
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!((clicks, impressions), (1, 10));
    let fields: std::collections::HashMap<String, i64> =
        redis::cmd("HGETALL").arg(&key).query_async(&mut connection).await.unwrap();
    assert_eq!(fields.len(), 2);
    assert_eq!(redis.keys(), vec![key.clone()]);

    let prefix = redis.config.key_prefix.clone();
    let url = redis.config.url.clone();
    drop(redis);
    let client = redis::Client::open(url).unwrap();
    let mut connection = client.get_multiplexed_async_connection().await.unwrap();
    let left: Vec<String> = redis::cmd("KEYS").arg(format!("{prefix}*")).query_async(&mut connection).await.unwrap();
    assert!(left.is_empty(), "the test kit leaves no keys behind: {left:?}");
}

#[tokio::test]
async fn unreachable_redis_is_a_clear_error() {
    let config = adrank_featurestore::RedisConfig {
        url: format!("redis://127.0.0.1:{}/0", adrank_testkit::free_port()),
        ..Default::default()
    };
    let error = online::server_version(&config).await.unwrap_err().to_string();
    assert!(error.contains(&config.url), "{error}");
}
