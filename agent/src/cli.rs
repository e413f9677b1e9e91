//! placeholder
pub fn cli_main(_args: Vec<String>) -> i32 {
    0
}
