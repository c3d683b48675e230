//! `svcnat version`: what this build is, for bug reports and rollouts.

use serde::Serialize;

use crate::inspect::Output;

/// The crate's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The commit it was built from (`unknown` outside a checkout without
/// `SVCNAT_COMMIT`; see build.rs).
pub const COMMIT: &str = env!("SVCNAT_COMMIT");
/// `svcnat --version` with the commit.
pub const LONG_VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("SVCNAT_COMMIT"),
    ")"
);
/// The Kubernetes API level the objects are read as (k8s-openapi's
/// feature; newer servers serve it too).
pub const KUBERNETES_API: &str = "1.33";

/// What `svcnat version` prints.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Info {
    /// [`VERSION`].
    pub version: &'static str,
    /// [`COMMIT`].
    pub commit: &'static str,
    /// The layout of the pinned maps this agent writes (`layout-vN` in the
    /// pin folder); it migrates older ones in place and refuses newer ones.
    pub pin_layout: u32,
    /// [`KUBERNETES_API`].
    pub kubernetes_api: &'static str,
}

/// This build's [`Info`].
pub fn info() -> Info {
    Info {
        version: VERSION,
        commit: COMMIT,
        pin_layout: proxy_common::LAYOUT_VERSION,
        kubernetes_api: KUBERNETES_API,
    }
}

/// [`info`] as `output` asks (wide is text).
pub fn render(output: Output) -> String {
    let i = info();
    match output {
        Output::Text | Output::Wide => format!(
            "svcnat {}\ncommit: {}\npin layout: v{}\nkubernetes API: {}\n",
            i.version, i.commit, i.pin_layout, i.kubernetes_api
        ),
        Output::Json => serde_json::to_string_pretty(&i).map_or_else(
            |e| format!("{{\"error\": \"{e}\"}}\n"),
            |mut s| {
                s.push('\n');
                s
            },
        ),
        Output::Yaml => serde_saphyr::to_string(&i).unwrap_or_else(|e| format!("error: {e}\n")),
    }
}
