pub use qkv_client::*;
