//! A WASI command, not a saga-host service: deploying it must be refused.

fn main() {
    println!("I am a command-line program, not a service.");
}
