//! A component that imports an interface of saga:host@0.1.0, the contract before typed broker
//! errors: loading it must fail with a message that names both versions.

wit_bindgen::generate!({
    inline: r#"
        package saga:host@0.1.0;

        interface logging {
            enum level { trace, debug, info, warn, error }
            log: func(level: level, message: string);
        }

        world old {
            import logging;
            export run: func();
        }
    "#,
});

struct Old;

impl Guest for Old {
    fn run() {
        saga::host::logging::log(saga::host::logging::Level::Info, "built for 0.1.0");
    }
}

export!(Old);
