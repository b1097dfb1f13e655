//! The real CPU-only `llama-server` (the dev build that `scripts/test.sh` exports as
//! `LLORCH_LLAMA_SERVER`) must be refused for a `gpu_policy = "gpu"` pool before any engine starts,
//! on any host: a CPU build lists no CUDA device. With `REQUIRE_REAL_LLAMA=1` a missing binary is a
//! failure; otherwise the test says it was skipped.

use engine::{EngineSource, GpuPolicy, ProvisionError, ProvisionRequest};

#[test]
fn real_cpu_llama_server_is_refused_for_a_gpu_pool() -> Result<(), Box<dyn std::error::Error>> {
    let Some(binary) = std::env::var_os("LLORCH_LLAMA_SERVER").map(std::path::PathBuf::from) else {
        assert!(
            std::env::var("REQUIRE_REAL_LLAMA").as_deref() != Ok("1"),
            "REQUIRE_REAL_LLAMA=1 but LLORCH_LLAMA_SERVER is unset"
        );
        eprintln!("skipped: LLORCH_LLAMA_SERVER is unset (run scripts/test.sh)");
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let req = ProvisionRequest {
        source: EngineSource::Binary {
            path: binary.clone(),
            sha256: None,
        },
        gpu: GpuPolicy::Gpu,
        build_number: None,
        build_commit: None,
        extra_cmake_flags: vec![],
        engines_dir: dir.path().to_path_buf(),
        jobs: 1,
    };
    let started = std::time::Instant::now();
    let result = engine::provision(&req, &|_| {});
    let Err(err) = result else {
        panic!("a CPU-only llama-server was accepted for gpu_policy = \"gpu\"");
    };
    assert!(
        matches!(&err, ProvisionError::CpuOnlyBinary(p) if *p == binary),
        "{err}"
    );
    assert!(err.to_string().contains("lists no CUDA device"), "{err}");
    eprintln!("refused in {:?}: {err}", started.elapsed());
    // The same binary is fine for a CPU pool, and is recorded as a CPU engine.
    let build = engine::provision(
        &ProvisionRequest {
            gpu: GpuPolicy::Cpu,
            ..req
        },
        &|_| {},
    )?;
    assert!(!build.gpu);
    Ok(())
}
