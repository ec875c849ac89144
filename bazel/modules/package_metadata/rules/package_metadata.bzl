"""package_metadata: declares a package URL (purl) for the targets of a repository."""

load("//providers:package_metadata_info.bzl", "PackageMetadataInfo")

def _package_metadata_impl(ctx):
    out = ctx.actions.declare_file("{}.package-metadata.json".format(ctx.attr.name))
    ctx.actions.write(
        output = out,
        content = json.encode({
            "attributes": {},
            "label": str(ctx.label),
            "purl": ctx.attr.purl,
        }),
    )
    return [
        DefaultInfo(files = depset([out])),
        PackageMetadataInfo(metadata = out, files = depset([out])),
    ]

_package_metadata = rule(
    implementation = _package_metadata_impl,
    attrs = {
        "purl": attr.string(mandatory = True, doc = "The package URL, see the purl specification."),
        "attributes": attr.label_list(doc = "Further metadata; accepted for API compatibility."),
    },
    provides = [PackageMetadataInfo],
)

def package_metadata(name, purl, attributes = [], visibility = None, **kwargs):
    """Declares the package URL of the enclosing repository.

    The target itself carries no metadata: a repository's default metadata would otherwise apply to the
    metadata target too and make it depend on itself.
    """
    _package_metadata(
        name = name,
        purl = purl,
        attributes = attributes,
        visibility = visibility,
        applicable_licenses = [],
        **kwargs
    )
