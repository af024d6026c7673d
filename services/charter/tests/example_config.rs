//! The example configuration in the repository root is valid and lists
//! every default.

use charter::Config;
use charter::config::Overrides;

#[test]
fn example_config_is_valid_and_matches_the_defaults() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../charter.example.toml");
    let config = Config::load(Some(&path), &Overrides::default()).unwrap();
    assert_eq!(config, Config::default());
}
