//! User kernels: WGSL the user hands in (`--kernel-file`), checked against the kernel
//! interface before anything binds, and the geometry of their tasks (one per input file).
//!
//! [`check`] parses and validates the source with naga (the compiler inside wgpu), then
//! checks what the interface requires: a compute entry point `main`, and only the three
//! bindings of group 0 with their address spaces (`params` uniform at 0, `input` read-only
//! storage at 1, `output` read-write storage at 2). Errors name `path:line:column`.

use wgpu::naga;

/// What the interface check learned about a kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// `@workgroup_size` of `main`: invocations per workgroup, x * y * z (one dimension is
    /// used: a task's items are `global_invocation_id.x`).
    pub workgroup_size: [u32; 3],
    /// The least bytes `input` (binding 1) and `output` (binding 2) must be bound with:
    /// a fixed-size type's size (`array<atomic<u32>, 256>`: 1024), a runtime-sized
    /// array's one element; 0 where the binding is not declared. A task's buffers are
    /// never bound smaller, whatever its input and `--output-bytes` give it.
    pub min_binding_bytes: [u64; 2],
    /// `output`'s size where its type has one (no runtime-sized array): all a task's
    /// result can be.
    pub fixed_output_bytes: Option<u64>,
}

impl Checked {
    pub fn invocations_per_workgroup(&self) -> u32 {
        self.workgroup_size.iter().product()
    }
}

fn at(source: &str, path: &str, span: naga::Span) -> String {
    if span.is_defined() {
        let loc = span.location(source);
        format!("{path}:{}:{}", loc.line_number, loc.line_position)
    } else {
        path.to_owned()
    }
}

/// Parses, validates and checks `source` against the kernel interface. `path` names the
/// file in errors (`path:line:column: what`, then naga's rendering of the spot).
pub fn check(source: &str, path: &str) -> Result<Checked, String> {
    let module = naga::front::wgsl::parse_str(source).map_err(|e| {
        let place = match e.location(source) {
            Some(loc) => format!("{path}:{}:{}", loc.line_number, loc.line_position),
            None => path.to_owned(),
        };
        format!("{place}: {e}\n{}", e.emit_to_string_with_path(source, path))
    })?;
    naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::default(),
    )
    .validate(&module)
    .map_err(|e| {
        let place = match e.location(source) {
            Some(loc) => format!("{path}:{}:{}", loc.line_number, loc.line_position),
            None => path.to_owned(),
        };
        format!(
            "{place}: {}\n{}",
            e.as_inner(),
            e.emit_to_string_with_path(source, path)
        )
    })?;
    let entry = module
        .entry_points
        .iter()
        .find(|e| e.name == "main" && e.stage == naga::ShaderStage::Compute)
        .ok_or_else(|| {
            format!(
                "{path}: no compute entry point `main` (declare `@compute @workgroup_size(64) fn \
                 main(@builtin(global_invocation_id) gid: vec3<u32>)`; see docs/kernels.md)"
            )
        })?;
    let (mut min_binding_bytes, mut fixed_output_bytes) = ([0u64; 2], None);
    for (handle, var) in module.global_variables.iter() {
        let Some(binding) = &var.binding else {
            continue;
        };
        let inner = &module.types[var.ty].inner;
        if let Some(min) = min_binding_bytes.get_mut((binding.binding as usize).wrapping_sub(1)) {
            *min = u64::from(inner.size(module.to_ctx()));
        }
        if binding.binding == 2 && !inner.is_dynamically_sized(&module.types) {
            fixed_output_bytes = Some(u64::from(inner.size(module.to_ctx())));
        }
        let place = at(source, path, module.global_variables.get_span(handle));
        let name = var.name.as_deref().unwrap_or("a variable");
        if binding.group != 0 {
            return Err(format!(
                "{place}: `{name}` is in group {}; the kernel interface has group 0 only",
                binding.group
            ));
        }
        use naga::{AddressSpace, StorageAccess};
        let fits = match (binding.binding, var.space) {
            (0, AddressSpace::Uniform) => true,
            (1, AddressSpace::Storage { access }) => access == StorageAccess::LOAD,
            (2, AddressSpace::Storage { access }) => access.contains(StorageAccess::STORE),
            _ => false,
        };
        if !fits {
            return Err(format!(
                "{place}: `{name}` at binding {} does not fit the kernel interface: binding 0 is \
                 `var<uniform> params: Params`, 1 `var<storage, read> input`, 2 `var<storage, \
                 read_write> output` (docs/kernels.md)",
                binding.binding
            ));
        }
    }
    let checked = Checked {
        workgroup_size: entry.workgroup_size,
        min_binding_bytes,
        fixed_output_bytes,
    };
    if checked.workgroup_size[1] != 1 || checked.workgroup_size[2] != 1 {
        return Err(format!(
            "{path}: `main` has @workgroup_size({}, {}, {}); the interface runs one dimension: \
             use @workgroup_size(N)",
            checked.workgroup_size[0], checked.workgroup_size[1], checked.workgroup_size[2]
        ));
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::Kernel;

    #[test]
    fn every_builtin_kernel_follows_the_interface() {
        for k in [
            Kernel::Spin,
            Kernel::Mandelbrot,
            Kernel::Search,
            Kernel::Copy,
        ] {
            let source = k.builtin_source().unwrap_or_default();
            let checked = check(source, k.name());
            assert!(checked.is_ok(), "{}: {:?}", k.name(), checked.err());
        }
    }

    const HEADER: &str = "struct Params { task_id: u32, offset: u32, count: u32, items: u32, \
        input_bytes: u32, output_bytes: u32, _pad0: u32, _pad1: u32, c: array<vec4<u32>, 2> }\n\
        @group(0) @binding(0) var<uniform> params: Params;\n\
        @group(0) @binding(1) var<storage, read> input: array<f32>;\n\
        @group(0) @binding(2) var<storage, read_write> output: array<f32>;\n";

    #[test]
    fn a_kernel_that_follows_the_interface_passes() {
        let src = format!(
            "{HEADER}@compute @workgroup_size(128)\nfn main(@builtin(global_invocation_id) g: \
             vec3<u32>) {{ if (g.x < params.count) {{ let i = params.offset + g.x; output[i] = \
             2.0 * input[i]; }} }}\n"
        );
        assert_eq!(
            check(&src, "k.wgsl").map(|c| c.workgroup_size),
            Ok([128, 1, 1])
        );
    }

    #[test]
    fn the_least_binding_sizes_are_the_declared_types() {
        let runtime = format!("{HEADER}@compute @workgroup_size(64)\nfn main() {{}}\n");
        let checked = check(&runtime, "k.wgsl").unwrap();
        assert_eq!(checked.min_binding_bytes, [4, 4]);
        assert_eq!(checked.fixed_output_bytes, None);
        let fixed = HEADER
            .replace("input: array<f32>", "input: array<vec4<f32>, 3>")
            .replace("output: array<f32>", "output: array<atomic<u32>, 256>")
            + "@compute @workgroup_size(64)\nfn main() {}\n";
        let checked = check(&fixed, "k.wgsl").unwrap();
        assert_eq!(checked.min_binding_bytes, [48, 1024]);
        assert_eq!(checked.fixed_output_bytes, Some(1024));
        let histogram = include_str!("../../examples/kernels/histogram.wgsl");
        assert_eq!(
            check(histogram, "histogram.wgsl")
                .unwrap()
                .min_binding_bytes[1],
            1024
        );
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let src = format!("{HEADER}@compute @workgroup_size(64)\nfn main() {{ let x = ; }}\n");
        let err = check(&src, "bad.wgsl").unwrap_err();
        assert!(err.starts_with("bad.wgsl:6:"), "{err}");
        let src =
            format!("{HEADER}@compute @workgroup_size(64)\nfn main() {{ output[0] = 1u; }}\n");
        let err = check(&src, "types.wgsl").unwrap_err();
        assert!(err.starts_with("types.wgsl:"), "{err}");
        assert!(
            err.split(':')
                .nth(1)
                .is_some_and(|l| l.parse::<u32>().is_ok()),
            "{err}"
        );
    }

    #[test]
    fn the_interface_is_enforced() {
        let no_main = format!("{HEADER}@compute @workgroup_size(64)\nfn run() {{}}\n");
        assert!(check(&no_main, "k.wgsl")
            .unwrap_err()
            .contains("no compute entry point"));
        let writable_input = HEADER.replace("storage, read> input", "storage, read_write> input")
            + "@compute @workgroup_size(64)\nfn main() { input[0] = 1.0; }\n";
        let err = check(&writable_input, "k.wgsl").unwrap_err();
        assert!(
            err.contains("binding 1") && err.starts_with("k.wgsl:3:"),
            "{err}"
        );
        let two_d = format!("{HEADER}@compute @workgroup_size(8, 8)\nfn main() {{}}\n");
        assert!(check(&two_d, "k.wgsl")
            .unwrap_err()
            .contains("one dimension"));
    }
}
