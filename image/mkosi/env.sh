# Shared locations of the image build. The cache outlives checkouts so that CI re-runs on the same machine
# reuse the tools tree, the package downloads and finished images.
MKOSI_CACHE="${CONSTELLATION_CACHE:-/var/cache/constellation}/mkosi"
MKOSI_TOOLS="$MKOSI_CACHE/tools-trixie"
# The .debs the tools tree was installed from (package bundles include them).
MKOSI_TOOLS_DEBS="$MKOSI_CACHE/tools-debs"
# Downloaded .debs of the image and the initrd, shared by every build from the archive; mkosi keeps apt's
# downloads in cache/apt/archives below it.
MKOSI_PACKAGES="$MKOSI_CACHE/packages"
MKOSI_PACKAGE_DEBS="$MKOSI_PACKAGES/cache/apt/archives"
# Finished images, one directory per input hash.
MKOSI_IMAGES="$MKOSI_CACHE/images"
