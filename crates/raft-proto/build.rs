//! Compiles proto/raftd.proto with protox (pure Rust, no protoc) and generates tonic code.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/raftd.proto");
    let fds = protox::compile(["proto/raftd.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
