//! Address, duration and size parsers never panic on any string.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidegate_config::parse;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else { return };
    let base = std::path::Path::new("/tmp");
    let _ = parse::listen_addr(s, base);
    let _ = parse::upstream_addr(s, base);
    let _ = parse::duration(s);
    let _ = parse::size(s);
    let _ = parse::host_match(s);
    let _ = parse::route_path(s);
});
