//! The real go command on a generated module, through goremotecache: [`GoProject`] (a module
//! and one machine's cache directories) and what its runs report, and the warm bucket that
//! tests starting from one share.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use serde_json::Value;

use super::{bin, s3};

/// The go command, checked once: the tests need Go 1.24 or later.
pub fn go() -> &'static str {
    static GO: OnceLock<String> = OnceLock::new();
    GO.get_or_init(|| {
        let go = std::env::var("GO").unwrap_or_else(|_| "go".into());
        let out = Command::new(&go)
            .args(["env", "GOVERSION"])
            .env("GOTOOLCHAIN", "local")
            .output()
            .unwrap_or_else(|err| panic!("these tests need the go command (1.24 or later): {err}"));
        let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let minor: u32 = version
            .strip_prefix("go1.")
            .and_then(|rest| rest.split(['.', 'r', 'b']).next())
            .and_then(|m| m.parse().ok())
            .unwrap_or_else(|| panic!("cannot read the go version from {version:?}"));
        assert!(
            minor >= 24,
            "these tests need Go 1.24 or later, found {version}"
        );
        go
    })
}

/// A generated Go module and the directories of one goremotecache cache, with helpers to
/// run the go command through it.
pub struct GoProject {
    pub root: tempfile::TempDir,
    pub module: PathBuf,
    pub cache_dir: PathBuf,
    pub lock_dir: PathBuf,
    gocache: PathBuf,
    runs: std::cell::Cell<u32>,
    /// More goremotecache options (a remote store's).
    pub args: Vec<String>,
    /// More environment for the go command and goremotecache.
    pub env: Vec<(String, String)>,
    /// A program that runs goremotecache (`wrapper goremotecache ARGS`), as CI setups do.
    pub wrapper: Option<PathBuf>,
    /// A subcommand that GOCACHEPROG runs before the options (`connect`: through the
    /// daemon); `None`: goremotecache's main mode.
    pub subcommand: Option<&'static str>,
}

/// What one go command printed, and goremotecache's figures for it.
pub struct GoRun {
    pub output: Output,
    pub stats: Option<Value>,
}

impl GoRun {
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    pub fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// A figure from the stats file; `remote.hits` reaches into the remote section.
    pub fn stat(&self, name: &str) -> u64 {
        self.stat_if_any(name)
            .unwrap_or_else(|| panic!("no {name} in stats: {:?}", self.stats))
    }

    /// A figure that only some runs have (`remote.prefetch.used` when prefetch is on).
    pub fn stat_if_any(&self, name: &str) -> Option<u64> {
        let mut value = self.stats.as_ref();
        for part in name.split('.') {
            value = value.and_then(|v| v.get(part));
        }
        value.and_then(Value::as_u64)
    }

    /// Gets answered from the remote store: fetched by the get itself, or by prefetch.
    pub fn remote_answers(&self) -> u64 {
        self.stat("remote.hits") + self.stat_if_any("remote.prefetch.used").unwrap_or(0)
    }

    /// The lines of `-x` output that run one of `tools` (`compile`, `asm`, `vet`, `link`).
    pub fn tool_runs(&self, tools: &[&str]) -> Vec<String> {
        self.stderr()
            .lines()
            .filter(|l| tools.iter().any(|tool| l.contains(&format!("/{tool} "))))
            .map(str::to_owned)
            .collect()
    }

    /// The compiler and assembler runs in `-x` output: a fully cached build has none. (A
    /// `go build` of a main package links again even with Go's own cache.)
    pub fn compiles(&self) -> Vec<String> {
        self.tool_runs(&["compile", "asm"])
    }
}

impl GoProject {
    /// A module of several packages with tests, unique to this test (`tag` goes into the
    /// code, so no two tests share action IDs for the module's own packages).
    pub fn new(tag: &str) -> Self {
        let root = tempfile::tempdir().unwrap();
        let module = root.path().join("mod");
        write_module(&module, tag);
        Self::on(root, module)
    }

    /// A project on `module`, with its machine's directories in `root`.
    fn on(root: tempfile::TempDir, module: PathBuf) -> Self {
        let project = Self {
            cache_dir: root.path().join("cache"),
            lock_dir: root.path().join("locks"),
            gocache: root.path().join("gocache"),
            module,
            root,
            runs: std::cell::Cell::new(0),
            args: Vec::new(),
            env: Vec::new(),
            wrapper: None,
            subcommand: None,
        };
        std::fs::create_dir_all(&project.gocache).unwrap();
        project
    }

    /// A project on the module that every test starting from a warm bucket shares
    /// ([`s3::warm_bucket`]): the go command's action IDs include a package's directory, so
    /// the bucket's entries are this module's only where it stays where it is. Its files must
    /// not be changed.
    pub fn on_shared_module() -> Self {
        static MODULE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
        let module = MODULE.get_or_init(|| {
            let dir = own_target_tmp_dir("shared-module");
            write_module(&dir, "shared");
            dir
        });
        Self::on(tempfile::tempdir().unwrap(), module.clone())
    }

    /// Moves to a new machine: fresh local cache, lock and GOCACHE directories (the module
    /// stays where it is, as a CI checkout does).
    pub fn switch_machine(&mut self, name: &str) {
        let dir = self.root.path().join(name);
        self.cache_dir = dir.join("cache");
        self.lock_dir = dir.join("locks");
        self.gocache = dir.join("gocache");
        std::fs::create_dir_all(&self.gocache).unwrap();
    }

    /// The GOCACHEPROG value for this project's cache, writing stats to `stats_file`.
    pub fn gocacheprog(&self, stats_file: &Path) -> String {
        let mut line = match &self.wrapper {
            Some(wrapper) => format!("{} ", wrapper.display()),
            None => String::new(),
        };
        line += bin();
        if let Some(subcommand) = self.subcommand {
            line += &format!(" {subcommand}");
        }
        line += &format!(
            " --cache-dir {} --lock-dir {} --stats-file {}",
            self.cache_dir.display(),
            self.lock_dir.display(),
            stats_file.display()
        );
        for arg in &self.args {
            line.push(' ');
            line.push_str(arg);
        }
        line
    }

    /// A go command in the module directory, configured to use only this project's caches.
    pub fn command(&self, args: &[&str]) -> (Command, PathBuf) {
        let n = self.runs.get() + 1;
        self.runs.set(n);
        let stats_file = self.root.path().join(format!("stats-{n}.json"));
        let mut command = Command::new(go());
        command
            .args(args)
            .current_dir(&self.module)
            .env("GOCACHEPROG", self.gocacheprog(&stats_file))
            .env("GOCACHE", &self.gocache)
            .env("GOTOOLCHAIN", "local")
            // No VCS stamp: the shared module lives in Cargo's temp directory inside this
            // repository, and a main package's action ID includes the stamp (revision and
            // "modified"), which an edit or a commit during the run would change.
            .env("GOFLAGS", "-mod=mod -buildvcs=false")
            .env("GOPROXY", "off")
            .env("GOWORK", "off")
            .env("GO111MODULE", "on")
            .env("CGO_ENABLED", "0")
            .env_remove("GOREMOTECACHE_CACHE_DIR")
            .env_remove("GOREMOTECACHE_LOCK_DIR")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .env_remove("GITHUB_STEP_SUMMARY");
        for (key, value) in &self.env {
            command.env(key, value);
        }
        (command, stats_file)
    }

    /// Builds the module's command and runs it: what a build from cached packages must
    /// print is `TOTAL 9!`.
    pub fn build_and_run_command(&self, name: &str) -> String {
        self.build_and_run(name).1
    }

    /// Builds the module's command and runs it; returns the build and what the command
    /// printed (`TOTAL 9!` when it is right).
    pub fn build_and_run(&self, name: &str) -> (GoRun, String) {
        let exe = self.root.path().join(name);
        let build = self.go(&["build", "-o", exe.to_str().unwrap(), "./cmd/e2e"]);
        let out = Command::new(&exe)
            .output()
            .expect("running the built command");
        (build, String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Moves to the fresh machine `name` and builds there: everything must come from the
    /// remote store, so nothing is compiled. Returns the build.
    pub fn build_on_fresh_machine(&mut self, name: &str) -> GoRun {
        self.switch_machine(name);
        let build = self.go(&["build", "-x", "./..."]);
        assert_eq!(
            build.compiles(),
            Vec::<String>::new(),
            "machine {name} compiled"
        );
        assert!(build.remote_answers() > 50, "{:?}", build.stats);
        build
    }

    /// Runs `go test ./...` and requires every package's result to come from the cache.
    pub fn assert_tests_cached(&self) {
        let test = self.go(&["test", "./..."]);
        for pkg in ["mathx", "report", "text"] {
            let line = format!("ok  \texample.com/e2e/{pkg}\t(cached)");
            assert!(
                test.stdout().contains(&line),
                "missing {line:?} in:\n{}",
                test.stdout()
            );
        }
    }

    /// Runs the go command and requires it to succeed.
    pub fn go(&self, args: &[&str]) -> GoRun {
        let (mut command, stats_file) = self.command(args);
        let output = command.output().expect("running go");
        assert!(
            output.status.success(),
            "go {args:?} failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        GoRun {
            output,
            stats: read_stats(&stats_file),
        }
    }
}

/// A `--stats-file`'s report, if the run wrote one.
pub fn read_stats(path: &Path) -> Option<Value> {
    std::fs::read(path)
        .ok()
        .map(|bytes| serde_json::from_slice(&bytes).expect("stats file is JSON"))
}

/// Writes a module with four packages, tests in three, and a command.
fn write_module(dir: &Path, tag: &str) {
    let files = [
        ("go.mod", "module example.com/e2e\n\ngo 1.24\n".to_string()),
        (
            "text/text.go",
            format!(
                "package text\n\nimport \"strings\"\n\n// Tag makes this module's action IDs unique to one test.\nconst Tag = {tag:?}\n\nfunc Shout(s string) string {{ return strings.ToUpper(s) + \"!\" }}\n"
            ),
        ),
        (
            "text/text_test.go",
            "package text\n\nimport \"testing\"\n\nfunc TestShout(t *testing.T) {\n\tif got := Shout(\"hi\"); got != \"HI!\" {\n\t\tt.Fatalf(\"Shout = %q\", got)\n\t}\n}\n".to_string(),
        ),
        (
            "mathx/mathx.go",
            "package mathx\n\nimport \"strconv\"\n\nfunc Sum(xs ...int) int {\n\tn := 0\n\tfor _, x := range xs {\n\t\tn += x\n\t}\n\treturn n\n}\n\nfunc Itoa(n int) string { return strconv.Itoa(n) }\n".to_string(),
        ),
        (
            "mathx/mathx_test.go",
            "package mathx\n\nimport \"testing\"\n\nfunc TestSum(t *testing.T) {\n\tif Sum(1, 2, 3) != 6 {\n\t\tt.Fatal(\"Sum\")\n\t}\n}\n".to_string(),
        ),
        (
            "report/report.go",
            "package report\n\nimport (\n\t\"example.com/e2e/mathx\"\n\t\"example.com/e2e/text\"\n)\n\nfunc Line(xs ...int) string { return text.Shout(\"total \" + mathx.Itoa(mathx.Sum(xs...))) }\n".to_string(),
        ),
        (
            "report/report_test.go",
            "package report\n\nimport \"testing\"\n\nfunc TestLine(t *testing.T) {\n\tif got := Line(1, 2); got != \"TOTAL 3!\" {\n\t\tt.Fatalf(\"Line = %q\", got)\n\t}\n}\n".to_string(),
        ),
        (
            "cmd/e2e/main.go",
            "package main\n\nimport (\n\t\"os\"\n\n\t\"example.com/e2e/report\"\n)\n\nfunc main() { os.Stdout.WriteString(report.Line(4, 5) + \"\\n\") }\n".to_string(),
        ),
    ];
    for (name, text) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
}

/// The regular files below `dir`, however deep (0 if it does not exist).
pub fn count_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => count_files(&entry.path()),
            Ok(kind) if kind.is_file() => 1,
            _ => 0,
        })
        .sum()
}

/// A directory `NAME-<pid>` of this test process under Cargo's temp directory for tests,
/// empty; those of test processes that are gone are removed first.
pub fn own_target_tmp_dir(name: &str) -> PathBuf {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    for entry in std::fs::read_dir(base).into_iter().flatten().flatten() {
        let file_name = entry.file_name();
        let pid = (file_name.to_str())
            .and_then(|n| n.strip_prefix(name)?.strip_prefix('-')?.parse::<u32>().ok());
        if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
    let dir = base.join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

/// Puts into `server`'s bucket, under `prefix`, what machine A leaves there after `go build
/// ./...` and `go test ./...` of [`GoProject::on_shared_module`]: built once per test binary
/// and copied into each test's own bucket, so that tests that start from a warm bucket do not
/// each compile the module and the standard library first.
pub fn warm_bucket(server: &s3::S3Server, prefix: &str) {
    static TEMPLATE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let template = TEMPLATE.get_or_init(|| {
        let builder = s3::S3Server::start();
        let mut project = GoProject::on_shared_module();
        project.args = builder.args("warm");
        project.env = s3::credentials(s3::SECRET_KEY);
        warm_the_bucket(&project);
        let dir = own_target_tmp_dir("warm-bucket");
        copy_tree(&builder.bucket_dir().join("warm"), &dir);
        dir
    });
    copy_tree(template, &server.bucket_dir().join(prefix));
}

/// Fills `project`'s local cache (a project on [`GoProject::on_shared_module`], whose cache
/// is empty) with what `go build ./...` and `go vet ./...` leave in a cache of their own with
/// the automatic trim off: built once per test binary and copied into each test's cache
/// directory, so that tests that start from a warm local cache (the trim's) do not each
/// compile the module and the standard library first. The copies' files are all just
/// modified: a test sets the ages it needs.
pub fn warm_local_cache(project: &GoProject) {
    static TEMPLATE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let template = TEMPLATE.get_or_init(|| {
        let mut builder = GoProject::on_shared_module();
        builder.args.push("--trim=off".into());
        builder.go(&["build", "./..."]);
        builder.go(&["vet", "./..."]);
        let dir = own_target_tmp_dir("warm-local-cache");
        copy_tree(&builder.cache_dir, &dir);
        dir
    });
    assert!(
        !project.cache_dir.exists(),
        "warm_local_cache fills a new project's cache"
    );
    copy_tree(template, &project.cache_dir);
}

/// Builds and tests on machine A, which uploads everything.
pub fn warm_the_bucket(project: &GoProject) {
    let build = project.go(&["build", "./..."]);
    assert!(build.stat("remote.uploads") > 50, "{:?}", build.stats);
    assert_eq!(build.stat("remote.upload_errors"), 0, "{:?}", build.stats);
    assert_eq!(build.stat("remote.uploads_dropped"), 0, "{:?}", build.stats);
    let test = project.go(&["test", "./..."]);
    assert_eq!(test.stat("remote.upload_errors"), 0, "{:?}", test.stats);
}

/// Copies the files below `from` to the same places below `to`.
pub fn copy_tree(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}
