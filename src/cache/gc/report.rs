//! The words of `gc-remote`: what a plan deletes and keeps in each namespace collected and in
//! total, and what a sweep deleted. One namespace reads as before namespaces existed: a
//! header line, then the tallies indented; several get a block each, then the total. The
//! module files (`--modules`) are one more block, named by their folder, `<prefix>/mod`.

use std::fmt::{self, Write as _};

use super::{Plan, REFRESH, Section, Swept, SweptSection, Tally};
use crate::cache::stats::human_bytes;
use crate::store::inventory::{NAMESPACES, describe};
use crate::store::s3::MODULES;

/// How the report names a section of the store at `location`: `s3://bucket/prefix`,
/// `s3://bucket/prefix (namespace pr-1)`, `s3://bucket/prefix/mod (module files)`.
fn label(location: &str, namespace: Option<&crate::ids::Namespace>, modules: bool) -> String {
    match modules {
        true => format!("{location}/{MODULES} (module files)"),
        false => describe(location, namespace),
    }
}

impl fmt::Display for Plan {
    /// The report of a run: what is deleted and what is kept, and why, per namespace.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let objects = match self.modules().is_some() {
            true => "entries, prefetch manifests and module files",
            false => "entries and prefetch manifests",
        };
        let what = format!(
            "{objects} last modified before {} ({} ago)",
            humantime::format_rfc3339_seconds(self.cutoff),
            humantime::format_duration(self.older_than),
        );
        let mut text = String::new();
        match (self.all, self.sections.as_slice()) {
            (false, [one]) => {
                let _ = writeln!(
                    text,
                    "{}: {what}",
                    label(&self.location, one.namespace.as_ref(), one.modules)
                );
                tallies(&mut text, one);
            }
            (_, sections) => {
                let _ = writeln!(text, "{}, {}: {what}", self.location, spaces(sections));
                for section in sections {
                    let _ = writeln!(
                        text,
                        "{}:",
                        label(&self.location, section.namespace.as_ref(), section.modules)
                    );
                    tallies(&mut text, section);
                }
                let _ = writeln!(text, "total:");
                tallies(&mut text, &self.total());
            }
        }
        if self.read_elsewhere.count > 0 {
            let _ = writeln!(
                text,
                "  read: {} of other namespaces, which keep the entries they list here",
                tally("recent manifest", self.read_elsewhere),
            );
        }
        if self.unreadable_elsewhere > 0 {
            let _ = writeln!(
                text,
                "  ({} of other namespaces could not be decoded and keep no entry)",
                counted(self.unreadable_elsewhere, "recent manifest")
            );
        }
        for (dir, why) in &self.skipped {
            let _ = writeln!(
                text,
                "  skipped: {}/{NAMESPACES}{dir}/, not a namespace ({why}): neither read nor \
                 collected",
                self.location
            );
        }
        if self.older_than <= REFRESH {
            let _ = writeln!(
                text,
                "  note: a build that leaves its manifest unchanged writes it again only once it \
                 is a day old, so builds that ran within {} may lose their entries too: \
                 choose days, not hours",
                humantime::format_duration(self.older_than),
            );
        }
        f.write_str(text.trim_end())
    }
}

/// `the un-namespaced area and 2 namespaces`, `1 namespace`, `the un-namespaced area, 0
/// namespaces and the module files`.
fn spaces(sections: &[Section]) -> String {
    let named = sections.iter().filter(|s| s.namespace.is_some()).count() as u64;
    let mut parts = Vec::new();
    if sections.iter().any(|s| s.namespace.is_none() && !s.modules) {
        parts.push("the un-namespaced area".to_string());
    }
    parts.push(counted(named, "namespace"));
    if sections.iter().any(|s| s.modules) {
        parts.push("the module files".to_string());
    }
    match parts.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} and {last}", rest.join(", ")),
        None => String::new(),
    }
}

fn tally(one: &str, t: Tally) -> String {
    format!("{} ({})", counted(t.count, one), human_bytes(t.bytes))
}

/// The lines of one section (or of the total), indented.
fn tallies(text: &mut String, section: &Section) {
    if section.modules {
        return module_tallies(text, section);
    }
    let _ = writeln!(
        text,
        "  to delete: {}, {}",
        tally("entry", section.old_entries),
        tally("manifest", section.old_manifests)
    );
    if section.old_packs.count > 0 {
        let _ = writeln!(
            text,
            "  to delete: {} whose manifest is old or gone",
            tally("pack", section.old_packs)
        );
    }
    let _ = writeln!(
        text,
        "  kept: {} modified since",
        tally("entry", section.recent_entries)
    );
    let _ = writeln!(
        text,
        "  kept: {} older but listed in a recent manifest",
        tally("entry", section.listed_entries)
    );
    let _ = writeln!(
        text,
        "  kept: {} modified since",
        tally("manifest", section.recent_manifests)
    );
    if section.unreadable_manifests > 0 {
        let _ = writeln!(
            text,
            "  ({} could not be decoded and keep no entry)",
            counted(section.unreadable_manifests, "recent manifest")
        );
    }
    if section.other.count > 0 {
        let _ = writeln!(
            text,
            "  kept: {} that are neither entries nor manifests",
            tally("other object", section.other)
        );
    }
}

/// The lines of the module files: by age alone, no manifest keeps anything.
fn module_tallies(text: &mut String, section: &Section) {
    let _ = writeln!(
        text,
        "  to delete: {}, {}",
        tally("immutable module file", section.old_entries),
        tally("list", section.old_manifests)
    );
    let _ = writeln!(
        text,
        "  kept: {}, {} modified since",
        tally("immutable module file", section.recent_entries),
        tally("list", section.recent_manifests)
    );
    if section.other.count > 0 {
        let _ = writeln!(
            text,
            "  kept: {} that are neither module files nor lists",
            tally("other object", section.other)
        );
    }
}

/// `1 entry`, `2 entries`, `1 manifest`, `0 manifests`.
pub(super) fn counted(n: u64, one: &str) -> String {
    match (n, one.strip_suffix('y')) {
        (1, _) => format!("1 {one}"),
        (_, Some(stem)) => format!("{n} {stem}ies"),
        (_, None) => format!("{n} {one}s"),
    }
}

impl fmt::Display for SweptSection {
    /// `deleted 3 entries and 1 manifest (1.2 KiB)`; for the module files, `deleted 3
    /// immutable module files and 1 list (1.2 KiB)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.modules {
            return write!(
                f,
                "deleted {} and {} ({})",
                counted(self.entries, "immutable module file"),
                counted(self.manifests, "list"),
                human_bytes(self.bytes),
            );
        }
        let entries = counted(self.entries, "entry");
        let manifests = counted(self.manifests, "manifest");
        match self.packs {
            0 => write!(f, "deleted {entries} and {manifests}")?,
            n => write!(
                f,
                "deleted {entries}, {manifests} and {}",
                counted(n, "pack")
            )?,
        }
        write!(f, " ({})", human_bytes(self.bytes))
    }
}

impl fmt::Display for Swept {
    /// One line per namespace collected, named, then the total with the time taken (one
    /// namespace selected: one line with the time).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let elapsed = self.elapsed.as_secs_f64();
        match (self.all, self.sections.as_slice()) {
            (false, [one]) => write!(
                f,
                "{}: {one} in {elapsed:.1}s",
                label(&self.location, one.namespace.as_ref(), one.modules)
            ),
            (_, sections) => {
                for section in sections {
                    writeln!(
                        f,
                        "{}: {section}",
                        label(&self.location, section.namespace.as_ref(), section.modules)
                    )?;
                }
                write!(f, "total: {} in {elapsed:.1}s", self.total())
            }
        }
    }
}
