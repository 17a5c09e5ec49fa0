//! The model loader: ONNX bytes as a peer sends them, stored and loaded (parsed, typed,
//! optimised) in process. Any bytes load or give a typed error. A panic inside tract is
//! caught by the loader and reported as an invalid model, which is the loader's documented
//! defence; only a panic that escapes it, or an abort, is a finding.
#![no_main]

use std::sync::{Arc, OnceLock};

use crank_inference::{Engine, EngineConfig, ModelStore};
use libfuzzer_sys::fuzz_target;

struct Loader {
    store: Arc<ModelStore>,
    engine: Engine,
    _dir: tempfile::TempDir,
}

fn loader() -> &'static Loader {
    static LOADER: OnceLock<Loader> = OnceLock::new();
    LOADER.get_or_init(|| {
        // libfuzzer-sys aborts on every panic, even a caught one; the loader catches tract's
        // panics by design, so restore the default hook. A panic that escapes the loader
        // still aborts (libfuzzer-sys wraps each input in its own catch).
        drop(std::panic::take_hook());
        std::panic::set_hook(Box::new(|_| {}));
        let dir = tempfile::tempdir().expect("a temporary directory");
        let store = Arc::new(ModelStore::open(dir.path(), 64 * 1024 * 1024).expect("a store"));
        let config = EngineConfig {
            workers: 1,
            plan_cache_entries: 1,
            isolate: false,
            ..EngineConfig::default()
        };
        let engine = Engine::new(config, store.clone()).expect("an engine");
        Loader {
            store,
            engine,
            _dir: dir,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let l = loader();
    let Ok(id) = l.store.put(data) else {
        return;
    };
    drop(l.engine.inspect(&id));
    drop(l.store.remove(&id));
});
