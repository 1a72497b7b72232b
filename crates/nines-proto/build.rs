//! Compiles the protos with protox (pure Rust), so building needs no protoc:
//! proto/nines/v1/*.proto (Raft traffic and the few calls etcd lacks) and proto/etcd (etcd's v3
//! API: etcdserverpb, mvccpb, authpb, and the lock and election services v3lockpb and
//! v3electionpb).

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read when the script runs, not baked in when it is compiled: a build
    // script binary reused from another checkout of the same tree (a shared
    // target dir) would otherwise compile that checkout's protos.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    println!("cargo:rerun-if-changed={}", root.display());
    let out = PathBuf::from(std::env::var("OUT_DIR")?);

    let files =
        ["admin.proto", "forward.proto", "raft.proto"].map(|f| root.join("nines/v1").join(f));
    let fds = protox::compile(&files, [&root])?;
    std::fs::write(out.join("nines_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;

    // etcd's services: methods nines does not implement yet answer
    // UNIMPLEMENTED through the generated default stubs.
    let etcd = root.join("etcd");
    let files = [
        "etcdserverpb/rpc.proto",
        "v3lockpb/v3lock.proto",
        "v3electionpb/v3election.proto",
    ]
    .map(|f| etcd.join(f));
    let fds = protox::compile(files, [&etcd])?;
    std::fs::write(out.join("etcd_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .generate_default_stubs(true)
        .compile_fds(fds)?;
    Ok(())
}
