//! Bounds a reader spends before it allocates (spec/FORMAT.md section 2).

/// Every figure a hostile file could inflate is checked against one of these first.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_index_len: u64,
    pub max_tensors: usize,
    pub max_dims: usize,
    pub max_name_len: usize,
    pub max_frame_decoded: u64,
    pub max_frames_per_stream: usize,
    pub max_files: usize,
    pub max_file_len: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_index_len: 256 << 20,
            max_tensors: 1_000_000,
            max_dims: 8,
            max_name_len: 1024,
            max_frame_decoded: 64 << 20,
            max_frames_per_stream: 1 << 24,
            max_files: 64,
            max_file_len: 256 << 20,
        }
    }
}
