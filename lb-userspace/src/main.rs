//! The `xdplb` command (see `lb_userspace::cli`).

fn main() {
    lb_userspace::cli::main();
}
