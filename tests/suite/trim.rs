//! Local trim with the real go command: `goremotecache trim`, the automatic trim after a
//! session, `--max-cache-size`, and builds running while a trim removes files under them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use crate::support::{GoProject, bin, outcome, warm_local_cache};

const DAY: u64 = 24 * 3600;

/// The regular files of the cache's `a/` and `o/`.
fn cache_files(cache: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for kind in ["a", "o"] {
        let Ok(shards) = std::fs::read_dir(cache.join(kind)) else {
            continue;
        };
        for shard in shards {
            for file in std::fs::read_dir(shard.unwrap().path()).unwrap() {
                files.push(file.unwrap().path());
            }
        }
    }
    files.sort();
    files
}

/// Sets the times of every file of the cache `age` back.
fn age_all(cache: &Path, age: Duration) {
    for file in cache_files(cache) {
        set_age(&file, age);
    }
}

fn set_age(path: &Path, age: Duration) {
    let at = SystemTime::now() - age;
    std::fs::File::options()
        .write(true)
        .open(path)
        .unwrap()
        .set_times(std::fs::FileTimes::new().set_accessed(at).set_modified(at))
        .unwrap();
}

fn modified_age(path: &Path) -> Duration {
    let modified = std::fs::symlink_metadata(path).unwrap().modified().unwrap();
    SystemTime::now()
        .duration_since(modified)
        .unwrap_or_default()
}

/// Disk space of `files`, as the trim counts it (allocated blocks).
fn disk_bytes(files: &[PathBuf]) -> u64 {
    use std::os::unix::fs::MetadataExt;
    (files.iter())
        .map(|file| std::fs::symlink_metadata(file).unwrap().blocks() * 512)
        .sum()
}

/// Seconds since the epoch.
fn unix_now() -> u64 {
    (SystemTime::now().duration_since(SystemTime::UNIX_EPOCH))
        .unwrap()
        .as_secs()
}

/// The time trim.txt records.
fn last_trim(project: &GoProject) -> u64 {
    (std::fs::read_to_string(project.cache_dir.join("trim.txt")))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A project whose go commands do not trim after themselves (only the test's own trims run),
/// its local cache holding what `go build ./...` and `go vet ./...` put there
/// ([`warm_local_cache`]).
fn built_and_vetted_with_manual_trims_only() -> GoProject {
    let mut project = GoProject::on_shared_module();
    project.args.push("--trim=off".into());
    warm_local_cache(&project);
    project
}

/// Runs `goremotecache trim` on the project's cache with `args`; returns its report line.
fn trim(project: &GoProject, args: &[&str]) -> String {
    let (code, stdout, stderr) = outcome(
        Command::new(bin())
            .arg("trim")
            .args(["--cache-dir", project.cache_dir.to_str().unwrap()])
            .args(["--lock-dir", project.lock_dir.to_str().unwrap()])
            .args(args),
    );
    assert_eq!(code, 0, "trim {args:?} failed: {stderr}");
    stdout
}

/// The number before `label` in a trim report ("... 12 entries and 3 outputs ...").
fn figure(report: &str, label: &str) -> u64 {
    let words: Vec<&str> = report.split_whitespace().collect();
    let at = (words
        .iter()
        .position(|w| w.trim_end_matches([',', ';']) == label))
    .unwrap_or_else(|| panic!("no {label} in {report:?}"));
    words[at - 1].trim_start_matches('(').parse().unwrap()
}

fn write_trim_time(project: &GoProject, ago: Duration) {
    let secs = unix_now() - ago.as_secs();
    std::fs::write(project.cache_dir.join("trim.txt"), format!("{secs}\n")).unwrap();
}

#[test]
fn trim_removes_what_went_unused_for_the_age_and_past_the_size_the_least_recently_used() {
    let project = built_and_vetted_with_manual_trims_only();
    age_all(&project.cache_dir, Duration::from_secs(10 * DAY));
    // The warm build uses (and so refreshes) the build's entries, not vet's.
    let warm = project.go(&["build", "-x", "./..."]);
    assert_eq!(warm.compiles(), Vec::<String>::new());
    let before = cache_files(&project.cache_dir);

    let dry = trim(&project, &["--dry-run"]);
    assert!(dry.contains("would remove"), "{dry}");
    assert!(figure(&dry, "entries") > 0, "vet's entries are old: {dry}");
    assert_eq!(
        cache_files(&project.cache_dir),
        before,
        "a dry run removed files"
    );

    let done = trim(&project, &[]);
    assert!(done.contains(" removed "), "{done}");
    assert_eq!(
        figure(&done, "entries"),
        figure(&dry, "entries"),
        "{dry}\n{done}"
    );
    assert_eq!(
        figure(&done, "outputs"),
        figure(&dry, "outputs"),
        "{dry}\n{done}"
    );
    let after = cache_files(&project.cache_dir);
    let removed = figure(&done, "entries") + figure(&done, "outputs");
    assert_eq!(before.len() - after.len(), removed as usize, "{done}");
    for file in &after {
        assert!(
            modified_age(file) < Duration::from_secs(DAY),
            "{} was not used within the age and is still there",
            file.display()
        );
    }
    // trim.txt records the trim.
    assert!(unix_now().abs_diff(last_trim(&project)) < 600);

    // What was used stays: a warm build compiles nothing and its command runs; vet runs again.
    let warm = project.go(&["build", "-x", "./..."]);
    assert_eq!(
        warm.compiles(),
        Vec::<String>::new(),
        "a used entry was trimmed"
    );
    assert_eq!(project.build_and_run_command("after-trim"), "TOTAL 9!\n");
    let vet = project.go(&["vet", "-x", "./..."]);
    assert!(
        !vet.tool_runs(&["vet"]).is_empty(),
        "vet's trimmed results were still found"
    );
    // Nothing left in tmp/ by the trim.
    let leftovers: Vec<_> = std::fs::read_dir(project.cache_dir.join("tmp"))
        .unwrap()
        .map(|f| f.unwrap().file_name())
        .filter(|name| name.to_string_lossy().starts_with("trim-"))
        .collect();
    assert_eq!(leftovers, Vec::<std::ffi::OsString>::new());

    max_cache_size_keeps_the_cache_under_the_bound(&project);
}

#[test]
fn the_automatic_trim_runs_once_a_day_after_the_session_unless_turned_off() {
    let mut project = GoProject::new("trim-auto");
    // With --stats, stderr stays open through the trim: the go command's output ends when
    // the trim has ended, so each check below sees its outcome.
    project.args.push("--stats".into());
    let first = project.go(&["build", "./..."]);
    assert!(
        first.stats.as_ref().unwrap()["trim"].is_object(),
        "a cache without trim.txt is trimmed: {:?}",
        first.stats
    );
    project.go(&["vet", "./..."]);
    let files = cache_files(&project.cache_dir).len();

    // trim.txt is recent: no trim, however old the files.
    age_all(&project.cache_dir, Duration::from_secs(10 * DAY));
    let quiet = project.go(&["list", "./..."]);
    assert!(
        quiet.stats.as_ref().unwrap()["trim"].is_null(),
        "{:?}",
        quiet.stats
    );
    assert_eq!(cache_files(&project.cache_dir).len(), files);

    // --trim=off: no trim even when one is due.
    write_trim_time(&project, Duration::from_secs(2 * DAY));
    project.args.push("--trim=off".into());
    let off = project.go(&["list", "./..."]);
    assert!(
        off.stats.as_ref().unwrap()["trim"].is_null(),
        "{:?}",
        off.stats
    );
    assert_eq!(cache_files(&project.cache_dir).len(), files);
    project.args.pop();

    // Due: the build's own entries, used by it, stay; vet's go. Said on stderr and in the
    // stats file.
    let trimmed = project.go(&["build", "-x", "./..."]);
    assert_eq!(trimmed.compiles(), Vec::<String>::new());
    let report = &trimmed.stats.as_ref().unwrap()["trim"];
    let removed = report["entries_removed"].as_u64().unwrap();
    assert!(removed > 0, "{report}");
    assert_eq!(report["dry_run"], false);
    assert!(
        trimmed.stderr().contains("goremotecache: trim removed"),
        "{}",
        trimmed.stderr()
    );
    let left = cache_files(&project.cache_dir).len();
    assert_eq!(
        files - left,
        (removed + report["outputs_removed"].as_u64().unwrap()) as usize
    );
    assert!(
        unix_now().abs_diff(last_trim(&project)) < 600,
        "trim.txt not updated"
    );
    assert_eq!(project.build_and_run_command("auto-trim"), "TOTAL 9!\n");
}

/// Then, on the same cache (one cold build less for the test run): `--max-cache-size` keeps
/// the cache under the bound, least recently used first.
fn max_cache_size_keeps_the_cache_under_the_bound(project: &GoProject) {
    project.go(&["test", "./..."]);
    let files = cache_files(&project.cache_dir);
    // Every file last used between 3 and 4 hours ago, in a scrambled order, except the
    // build's own (used by a warm build below, which then refreshes them).
    for (i, file) in files.iter().enumerate() {
        let minutes = 180 + (i * 7919) % 60;
        set_age(file, Duration::from_secs(minutes as u64 * 60));
    }
    let warm = project.go(&["build", "-x", "./..."]);
    assert_eq!(warm.compiles(), Vec::<String>::new());
    let used: Vec<PathBuf> = (cache_files(&project.cache_dir).into_iter())
        .filter(|file| modified_age(file) < Duration::from_secs(3600))
        .collect();
    assert!(
        used.len() > 10,
        "the warm build refreshed {} files",
        used.len()
    );

    let total = disk_bytes(&cache_files(&project.cache_dir));
    let used_bytes = disk_bytes(&used);
    // A bound between what the warm build used and everything.
    let bound = used_bytes + (total - used_bytes) / 2;
    let report = trim(project, &["--max-cache-size", &bound.to_string()]);
    let after = disk_bytes(&cache_files(&project.cache_dir));
    assert!(
        after <= bound / 10 * 9,
        "{after} > 90% of {bound}: {report}"
    );
    assert!(figure(&report, "entries") > 0, "{report}");
    for file in &used {
        assert!(
            file.exists(),
            "recently used {} was removed",
            file.display()
        );
    }
    let warm = project.go(&["build", "-x", "./..."]);
    assert_eq!(warm.compiles(), Vec::<String>::new(), "{report}");
    project.go(&["test", "./..."]);
    assert_eq!(project.build_and_run_command("size-trim"), "TOTAL 9!\n");
}

#[test]
fn builds_running_while_trims_remove_files_under_them_all_succeed() {
    let project = built_and_vetted_with_manual_trims_only();
    age_all(&project.cache_dir, Duration::from_secs(10 * DAY));
    // Several go commands share the cache while trims keep removing what is old.
    let runs = [
        vec!["vet", "./..."],
        vec!["build", "./..."],
        vec!["build", "./..."],
    ];
    let children: Vec<_> = runs
        .iter()
        .map(|args| {
            let (mut command, _) = project.command(args);
            command.stdout(std::process::Stdio::piped());
            command.stderr(std::process::Stdio::piped());
            command.spawn().unwrap()
        })
        .collect();
    let mut trims = 0;
    let mut removed = 0;
    let deadline = std::time::Instant::now() + Duration::from_secs(900);
    let mut children: Vec<_> = children.into_iter().map(Some).collect();
    let mut outputs = Vec::new();
    while children.iter().any(Option::is_some) {
        assert!(
            std::time::Instant::now() < deadline,
            "builds did not finish"
        );
        let report = trim(&project, &[]);
        removed += figure(&report, "entries") + figure(&report, "outputs");
        trims += 1;
        for child in children.iter_mut() {
            if child
                .as_mut()
                .is_some_and(|c| c.try_wait().unwrap().is_some())
            {
                outputs.push(child.take().unwrap().wait_with_output().unwrap());
            }
        }
    }
    for out in &outputs {
        assert!(
            out.status.success(),
            "a go command failed beside a trim:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert!(
        trims > 0 && removed > 0,
        "{trims} trims removed {removed} files"
    );
    assert_eq!(project.build_and_run_command("race"), "TOTAL 9!\n");
    let vet = project.go(&["vet", "-x", "./..."]);
    assert_eq!(
        vet.tool_runs(&["vet"]),
        Vec::<String>::new(),
        "vet's results were lost"
    );
}
