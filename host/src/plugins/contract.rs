//! Checks that a component implements a version of `recohost:strategy` this host speaks.

use super::bindings::{WIT_PACKAGE, WIT_VERSION};

/// Why a component does not fit the contract.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ContractError {
    #[error(
        "it does not export `{WIT_PACKAGE}/plugin`; its exports are [{}]. Build it against wit/strategy.wit (world `strategy`)",
        exports.join(", ")
    )]
    NotAStrategy { exports: Vec<String> },
    #[error(
        "it was built for {WIT_PACKAGE}@{found}, but this host implements {WIT_PACKAGE}@{}.{}.{} and accepts {}.x up to {}.{}",
        WIT_VERSION.0, WIT_VERSION.1, WIT_VERSION.2, WIT_VERSION.0, WIT_VERSION.0, WIT_VERSION.1
    )]
    IncompatibleVersion { found: String },
}

/// Returns the component's WIT version (e.g. "1.0.0") if the host can run it.
///
/// Semver rules: same major version, and a minor version no newer than the host's (a newer
/// minor may call host functions this host lacks).
pub fn check(export_names: &[String]) -> Result<String, ContractError> {
    let prefix = format!("{WIT_PACKAGE}/plugin@");
    let Some(version) = export_names
        .iter()
        .find_map(|name| name.strip_prefix(&prefix))
    else {
        return Err(ContractError::NotAStrategy {
            exports: export_names.to_vec(),
        });
    };
    let compatible = semver::Version::parse(version)
        .is_ok_and(|v| v.major == WIT_VERSION.0 && v.minor <= WIT_VERSION.1);
    if compatible {
        Ok(version.to_string())
    } else {
        Err(ContractError::IncompatibleVersion {
            found: version.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn accepts_same_major_and_older_minor() {
        assert_eq!(
            check(&names(&["recohost:strategy/plugin@1.0.0"])),
            Ok("1.0.0".into())
        );
    }

    #[test]
    fn rejects_another_major_naming_both_versions() {
        let error = check(&names(&["recohost:strategy/plugin@2.0.0"])).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("recohost:strategy@2.0.0"), "{message}");
        assert!(message.contains("recohost:strategy@1.0.0"), "{message}");
        assert!(check(&names(&["recohost:strategy/plugin@1.9.0"])).is_err());
        assert!(check(&names(&["recohost:strategy/plugin@garbage"])).is_err());
    }

    #[test]
    fn rejects_components_without_the_interface() {
        let error = check(&names(&["wasi:cli/run@0.2.0"])).unwrap_err();
        assert!(error.to_string().contains("wasi:cli/run@0.2.0"));
    }
}
