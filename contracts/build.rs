//! With the `grpc` feature: the gRPC API's messages and service stubs from
//! `proto/adrank/v1/ranking.proto`, compiled by protox (no protoc on the machine).

fn main() {
    #[cfg(feature = "grpc")]
    grpc();
}

#[cfg(feature = "grpc")]
fn grpc() {
    let proto = "proto/adrank/v1/ranking.proto";
    println!("cargo:rerun-if-changed={proto}");
    let descriptors = protox::compile([proto], ["proto"]).expect("the gRPC API's proto file compiles");
    tonic_prost_build::configure()
        .build_transport(false)
        .compile_fds(descriptors)
        .expect("the gRPC API's Rust code is generated");
}
