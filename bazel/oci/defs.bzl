"""oci_image: a single-binary container image archive, built without a registry or container engine."""

def _oci_image_impl(ctx):
    archive = ctx.actions.declare_file(ctx.label.name + ".tar")
    image_id = ctx.actions.declare_file(ctx.label.name + ".id")
    ctx.actions.run(
        executable = ctx.executable._tool,
        arguments = [
            "--binary",
            ctx.file.binary.path,
            "--path",
            ctx.attr.path,
            "--tag",
            ctx.attr.tag,
            "--out",
            archive.path,
            "--id-out",
            image_id.path,
        ],
        inputs = [ctx.file.binary],
        outputs = [archive, image_id],
        mnemonic = "OCIImage",
        progress_message = "Building image %s" % ctx.attr.tag,
    )
    return [DefaultInfo(files = depset([archive, image_id]))]

oci_image = rule(
    implementation = _oci_image_impl,
    doc = "Writes <name>.tar (docker-archive, for `ctr images import`) and <name>.id (the image ID).",
    attrs = {
        "binary": attr.label(allow_single_file = True, mandatory = True, doc = "a statically linked executable"),
        "path": attr.string(mandatory = True, doc = "absolute path of the executable in the image"),
        "tag": attr.string(mandatory = True, doc = "image reference"),
        "_tool": attr.label(default = "//bazel/oci/cmd/ociimage", executable = True, cfg = "exec"),
    },
)
