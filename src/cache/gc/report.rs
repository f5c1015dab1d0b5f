//! The words of `gc-remote`: what a plan deletes and keeps in each namespace collected and in
//! total, and what a sweep deleted. One namespace reads as before namespaces existed: a
//! header line, then the tallies indented; several get a block each, then the total.

use std::fmt::{self, Write as _};

use super::{Plan, REFRESH, Section, Swept, SweptSection, Tally};
use crate::cache::stats::human_bytes;
use crate::store::inventory::{NAMESPACES, describe};

impl fmt::Display for Plan {
    /// The report of a run: what is deleted and what is kept, and why, per namespace.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = format!(
            "entries and prefetch manifests last modified before {} ({} ago)",
            humantime::format_rfc3339_seconds(self.cutoff),
            humantime::format_duration(self.older_than),
        );
        let mut text = String::new();
        match (self.all, self.sections.as_slice()) {
            (false, [one]) => {
                let _ = writeln!(
                    text,
                    "{}: {what}",
                    describe(&self.location, one.namespace.as_ref())
                );
                tallies(&mut text, one);
            }
            (_, sections) => {
                let _ = writeln!(text, "{}, {}: {what}", self.location, spaces(sections));
                for section in sections {
                    let _ = writeln!(
                        text,
                        "{}:",
                        describe(&self.location, section.namespace.as_ref())
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

/// `the un-namespaced area and 2 namespaces`, `1 namespace`.
fn spaces(sections: &[Section]) -> String {
    let named = sections.iter().filter(|s| s.namespace.is_some()).count() as u64;
    let namespaces = counted(named, "namespace");
    match sections.iter().any(|s| s.namespace.is_none()) {
        true => format!("the un-namespaced area and {namespaces}"),
        false => namespaces,
    }
}

fn tally(one: &str, t: Tally) -> String {
    format!("{} ({})", counted(t.count, one), human_bytes(t.bytes))
}

/// The lines of one section (or of the total), indented.
fn tallies(text: &mut String, section: &Section) {
    let _ = writeln!(
        text,
        "  to delete: {}, {}",
        tally("entry", section.old_entries),
        tally("manifest", section.old_manifests)
    );
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

/// `1 entry`, `2 entries`, `1 manifest`, `0 manifests`.
pub(super) fn counted(n: u64, one: &str) -> String {
    match (n, one.strip_suffix('y')) {
        (1, _) => format!("1 {one}"),
        (_, Some(stem)) => format!("{n} {stem}ies"),
        (_, None) => format!("{n} {one}s"),
    }
}

impl fmt::Display for SweptSection {
    /// `deleted 3 entries and 1 manifest (1.2 KiB)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "deleted {} and {} ({})",
            counted(self.entries, "entry"),
            counted(self.manifests, "manifest"),
            human_bytes(self.bytes),
        )
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
                describe(&self.location, one.namespace.as_ref())
            ),
            (_, sections) => {
                for section in sections {
                    writeln!(
                        f,
                        "{}: {section}",
                        describe(&self.location, section.namespace.as_ref())
                    )?;
                }
                write!(f, "total: {} in {elapsed:.1}s", self.total())
            }
        }
    }
}
