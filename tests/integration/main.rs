//! Integration tests against the real dependencies: a tansu broker, Redis, ONNX Runtime, and the
//! `adrank` binary itself. One test binary (modules below) so the suite links once.

mod batcher;
mod cli_config;
mod closed_loop;
mod demo;
mod deploy;
mod distributed;
mod generator;
mod ingest;
mod ingest_crash;
mod kafka_round_trip;
mod local_stack;
mod observability;
mod online_store;
mod onnxruntime;
mod own_model;
mod redis_round_trip;
mod registry;
mod retrain;
mod rollout_loop;
mod serving_api;
mod serving_faults;
mod serving_fuzz;
mod serving_grpc;
mod serving_model;
mod sim;
mod trainer;
