//! The proxy-wasm ABI (v0.2.1), the few host functions the filter uses, with safe wrappers.
//!
//! The filter implements the ABI itself instead of using the proxy-wasm SDK's dispatcher: the
//! SDK exports every callback (context create, response headers, bodies, log, done, delete...),
//! and Envoy calls each export it finds, for every request. Exporting only what the filter
//! needs leaves one VM call per HTTP request (`proxy_on_request_headers`). The signatures and
//! numeric codes are those of the ABI specification (and of the proxy-wasm Rust SDK 0.2.5).

use std::ptr::null_mut;

/// `proxy_status_t`.
pub type Status = u32;
pub const STATUS_OK: Status = 0;
pub const STATUS_NOT_FOUND: Status = 1;

/// `proxy_action_t`.
pub const ACTION_CONTINUE: u32 = 0;
pub const ACTION_PAUSE: u32 = 1;

/// `proxy_log_level_t`.
#[derive(Debug, Clone, Copy)]
#[repr(u32)]
pub enum LogLevel {
    Debug = 1,
    Info = 2,
    Warn = 3,
    Error = 4,
}

const BUFFER_PLUGIN_CONFIGURATION: u32 = 7;
const MAP_HTTP_REQUEST_HEADERS: u32 = 0;
const METRIC_COUNTER: u32 = 0;
const STREAM_DOWNSTREAM: u32 = 2;
const STREAM_UPSTREAM: u32 = 3;

#[link(wasm_import_module = "env")]
unsafe extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> Status;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> Status;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> Status;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_buffer_data: *mut *mut u8,
        return_buffer_size: *mut usize,
    ) -> Status;
    fn proxy_send_local_response(
        status_code: u32,
        status_code_details_data: *const u8,
        status_code_details_size: usize,
        body_data: *const u8,
        body_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        grpc_status: i32,
    ) -> Status;
    fn proxy_close_stream(stream_type: u32) -> Status;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> Status;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> Status;
    fn proxy_set_tick_period_milliseconds(period: u32) -> Status;
}

/// A host call failed with this status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError(pub Status);

/// Takes ownership of a buffer the host allocated with [`proxy_on_memory_allocate`].
fn take(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        return Vec::new();
    }
    // SAFETY: the host got `data` from proxy_on_memory_allocate(size), which leaks a boxed
    // slice of exactly `size` bytes (length = capacity = size) with the global allocator; it
    // hands it to us once.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

/// Runs a host call that returns a buffer: `Ok(None)` when the host says NotFound.
fn returned(
    call: impl FnOnce(*mut *mut u8, *mut usize) -> Status,
) -> Result<Option<Vec<u8>>, HostError> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    match call(&mut data, &mut size) {
        STATUS_OK => Ok(Some(take(data, size))),
        STATUS_NOT_FOUND => Ok(None),
        s => Err(HostError(s)),
    }
}

pub fn log(level: LogLevel, message: &str) {
    // SAFETY: pointer and length of a live str.
    unsafe {
        proxy_log(level as u32, message.as_ptr(), message.len());
    }
}

/// A property by its path as the ABI serializes it: the segments joined by NUL
/// (`"connection\0uri_san_peer_certificate"`), written so as a constant to spare the request
/// path an allocation.
pub fn get_property(path: &str) -> Result<Option<Vec<u8>>, HostError> {
    returned(|data, size| {
        // SAFETY: input pointer/length of a live str; output pointers to locals.
        unsafe { proxy_get_property(path.as_ptr(), path.len(), data, size) }
    })
}

/// A request header by (lowercase) name.
pub fn get_request_header(name: &str) -> Result<Option<Vec<u8>>, HostError> {
    returned(|data, size| {
        // SAFETY: input pointer/length of a live str; output pointers to locals.
        unsafe {
            proxy_get_header_map_value(
                MAP_HTTP_REQUEST_HEADERS,
                name.as_ptr(),
                name.len(),
                data,
                size,
            )
        }
    })
}

/// The plugin configuration of the root context being configured.
pub fn plugin_configuration(size: usize) -> Result<Option<Vec<u8>>, HostError> {
    returned(|data, out| {
        // SAFETY: output pointers to locals.
        unsafe { proxy_get_buffer_bytes(BUFFER_PLUGIN_CONFIGURATION, 0, size, data, out) }
    })
}

/// Answers the current request locally.
pub fn send_local_response(
    status: u32,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Result<(), HostError> {
    let headers = serialize_map(headers);
    let details = b"sigil_authz_denied";
    // SAFETY: pointers/lengths of live buffers.
    let s = unsafe {
        proxy_send_local_response(
            status,
            details.as_ptr(),
            details.len(),
            body.as_ptr(),
            body.len(),
            headers.as_ptr(),
            headers.len(),
            -1,
        )
    };
    if s == STATUS_OK {
        Ok(())
    } else {
        Err(HostError(s))
    }
}

/// Closes both directions of the current TCP connection.
pub fn close_connection() {
    // SAFETY: no pointers.
    unsafe {
        proxy_close_stream(STREAM_DOWNSTREAM);
        proxy_close_stream(STREAM_UPSTREAM);
    }
}

pub fn define_counter(name: &str) -> Result<u32, HostError> {
    let mut id = 0;
    // SAFETY: pointer/length of a live str, output pointer to a local.
    match unsafe { proxy_define_metric(METRIC_COUNTER, name.as_ptr(), name.len(), &mut id) } {
        STATUS_OK => Ok(id),
        s => Err(HostError(s)),
    }
}

pub fn increment_metric(id: u32, by: i64) -> Result<(), HostError> {
    // SAFETY: no pointers.
    match unsafe { proxy_increment_metric(id, by) } {
        STATUS_OK => Ok(()),
        s => Err(HostError(s)),
    }
}

pub fn set_tick_period_ms(ms: u32) {
    // SAFETY: no pointers.
    unsafe {
        proxy_set_tick_period_milliseconds(ms);
    }
}

/// The ABI's header map encoding: count, then (key length, value length) pairs, then each key
/// and value followed by a NUL.
fn serialize_map(map: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        4 + map
            .iter()
            .map(|(k, v)| k.len() + v.len() + 10)
            .sum::<usize>(),
    );
    out.extend_from_slice(&(map.len() as u32).to_le_bytes());
    for (k, v) in map {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in map {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// Memory for data the host passes in (ABI export).
#[unsafe(no_mangle)]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let buf: Box<[u8]> = vec![0u8; size].into_boxed_slice();
    Box::into_raw(buf).cast::<u8>()
}

/// The ABI version marker the host looks for.
#[unsafe(no_mangle)]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[cfg(target_os = "wasi")]
unsafe extern "C" {
    fn __wasm_call_ctors();
}

/// WASI reactor entry point: runs static constructors (what the SDK's `main!` does).
#[cfg(target_os = "wasi")]
#[unsafe(no_mangle)]
pub extern "C" fn _initialize() {
    // SAFETY: called once by the host before any other export, as WASI reactors require.
    unsafe { __wasm_call_ctors() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_map_encoding() {
        let m = serialize_map(&[("a", "bc")]);
        assert_eq!(
            m,
            [1, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, b'a', 0, b'b', b'c', 0]
        );
    }
}
