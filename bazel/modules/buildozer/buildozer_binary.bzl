"""The buildozer_binary module extension: a repository holding the buildozer that bazel/setup.sh built."""

def _buildozer_binary_repo_impl(rctx):
    rctx.symlink(rctx.attr.binary, "buildozer.exe")
    rctx.file("BUILD.bazel", 'exports_files(["buildozer.exe"])\n')

_buildozer_binary_repo = repository_rule(
    implementation = _buildozer_binary_repo_impl,
    attrs = {"binary": attr.label(allow_single_file = True)},
)

def _buildozer_binary_impl(module_ctx):
    _buildozer_binary_repo(name = "buildozer_binary", binary = Label("//:buildozer"))
    return module_ctx.extension_metadata(reproducible = True)

buildozer_binary = module_extension(implementation = _buildozer_binary_impl)
