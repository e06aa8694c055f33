//! What the boot partition (anyone who can write it) feeds cairn: GRUB's
//! environment block, an image's boot.cfg, names found on the disk. Nothing
//! may panic; what cairn writes it reads back the same.
#![no_main]

use cairn::boot::env;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // An environment block: the header, the fuzzed bytes, padding.
    let mut block = b"# GRUB Environment Block\n".to_vec();
    block.extend_from_slice(data);
    block.resize(env::SIZE, b'#');
    let _ = env::parse(data);
    if let Ok(vars) = env::parse(&block) {
        if let Ok(again) = env::render(&vars) {
            assert_eq!(env::parse(&again).unwrap(), vars);
        }
    }
    let text = String::from_utf8_lossy(data);
    if let Some(args) = cairn::image::boot_cfg_args(&text) {
        assert!(!args.is_empty() && !args.contains('\n'));
    }
    for word in text.split_whitespace() {
        if cairn::names::is_safe(word) {
            assert!(!word.contains(['/', ' ', '"', '\'', '$', ';']));
        }
        let _ = cairn::profile::refused_kernel_arg(word);
    }
});
