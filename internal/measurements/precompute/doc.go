// Package precompute precomputes, from the files alone, the PCR values a boot of a Unified Kernel Image
// (UKI: systemd-stub + kernel + initrd + command line in one PE file) produces, so that reference values
// can be published with an image and so that the local provider's launcher can extend a vTPM exactly as
// firmware, boot loader and stub would.
//
// Modelled (systemd-stub 252, Linux 6.1, see docs/architecture.md §5):
//
//   - PCR 4: firmware's EV_EFI_ACTION "Calling EFI Application from Boot Option" and EV_SEPARATOR (per
//     Platform), then the Authenticode SHA-256 of each image loaded through the firmware's LoadImage:
//     systemd-boot (if on the path), the UKI, and the kernel PE from .linux, which systemd-stub 252 starts
//     with LoadImage/StartImage.
//   - PCR 11: for each of .linux .osrel .cmdline .initrd .splash .dtb .pcrpkey that is present, in that
//     order, SHA-256 of the name with its NUL, then SHA-256 of the VirtualSize bytes of content.
//     Optionally followed by systemd-pcrphase's enter-initrd, leave-initrd, sysinit, ready.
//   - PCR 9: Linux's EFI stub measures LoadOptions (the command line as NUL-terminated UTF-16LE, as
//     systemd-stub sets it) and then the initrd it loads via LINUX_EFI_INITRD_MEDIA_GUID.
//   - PCR 12: zero on the direct path. On the systemd-boot path, systemd-boot measures the command line it
//     passes (the UKI's mangled .cmdline) and systemd-stub measures it again when it accepts it (always
//     without Secure Boot).
//
// Not modelled, i.e. assumed absent: credentials, system extensions or addons on the ESP (252 measures
// them into PCRs 12/13 and packs them into the initrd Linux measures into PCR 9), systemd-boot drivers,
// firmware boot options tried before the UKI, and LoadOptions in the firmware's own boot entry on the
// direct path (they would make the stub replace .cmdline and measure it into PCR 12).
package precompute
