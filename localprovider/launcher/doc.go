// Package launcher is the `local` provider's firmware: before a node's userspace runs in its namespaces, it
// does on the node's own swtpm vTPM what UEFI firmware, systemd-stub and the initrd do on a real machine
// booting the same image (docs/architecture.md §5 and §6).
//
// Launch takes an image directory (image/mkosi/build.sh's output: constellation.efi, root.erofs,
// root.verity) and, in this order:
//
//  1. reads the UKI once, parses it with measurements.ParseUKI and predicts the boot's extends with
//     measurements.Precompute, the code that computes the published reference values, so that what is
//     extended and what is expected cannot drift apart;
//  2. takes the root hash from `roothash=` on the command line systemd-stub would pass (the measured
//     .cmdline, measurements.StubCmdline), and refuses a UKI without one: it could not bind a root;
//  3. opens root.erofs and root.verity, refusing a root file others can write to (see TOCTOU below);
//  4. refuses a vTPM whose PCRs 4, 9, 11 and 12 (and any other PCR the boot extends) are not all zero,
//     the state swtpm is in after its startup-clear: a node is launched once per vTPM power cycle;
//  5. extends every event of the prediction up to the kernel's start (firmware, boot loader if any,
//     systemd-stub, Linux's EFI stub), then systemd-pcrphase's "enter-initrd", in order, and writes them
//     to a TCG2 event log (see Event log below);
//  6. verifies root.erofs against root.verity and the root hash with localprovider/verity, and checks the
//     geometry (below). A mismatch refuses the launch with an error that says what differs;
//  7. extends "leave-initrd" and returns a Boot whose Root describes the verified bytes.
//
// Steps 1 to 4 touch neither the vTPM nor the log, so an unusable image or a used vTPM leaves the vTPM as it
// was. A root that
// fails verification in step 6 leaves the vTPM measured up to enter-initrd, as a real machine whose initrd
// refuses its root would; relaunching then needs a fresh vTPM.
//
// # Phases
//
// systemd 252's systemd-pcrphase extends enter-initrd, leave-initrd, sysinit and ready into PCR 11 on the
// way to a booted system, and the published reference values include all four (Result.PCRs(true)). The
// launcher plays the initrd, so Launch extends the first two: enter-initrd before it verifies the root,
// leave-initrd once it hands the verified root over (the moment a real initrd switches root). The other
// two belong to the node's userspace, which the node runtime brings up: it calls Boot.EnterPhase with
// measurements.PhaseSysinit once the node's early set-up (mounts, namespaces) is done, and with
// measurements.PhaseReady just before it starts the bootstrapper, so that the bootstrapper's first quote
// already shows the booted values (on a real node systemd-pcrphase.service extends "ready" once remote
// file systems are up, before user sessions). Boot.CompleteBoot enters whatever is left. Phases can only
// be entered in order, each once. After the last one the vTPM holds exactly the precomputed booted values;
// the launcher checks this, and after every step that the vTPM holds what it extended, which catches a
// second launcher extending the same vTPM concurrently (ErrTPMDiverged; the Boot then refuses further
// phases).
//
// # Event log
//
// The log is a crypto-agile (SHA-256) TCG2 event log built with eventlog.Builder, holding exactly the extends
// made, in order, phases included, so that the vTPM issuer can attach it (vtpm.WithEventLogFile, e.g. the
// verification service's --event-log flag; on a VM it is vtpm.DefaultEventLogPath, which a local node does
// not have) and the verifier can replay it and name what differs. It is rewritten
// atomically (a new file renamed over the old) after each step, so a reader never sees a partial log.
// Unlike firmware's log it has no StartupLocality event: the vTPM is started from locality 0 and the
// launcher extends from there.
//
// # Geometry
//
// The root hash binds the data only together with the tree's geometry, which comes from root.verity's
// untrusted superblock (localprovider/verity's documented limitation). After verification the launcher reads
// the erofs superblock from the verified bytes and requires its magic and that the file system's size
// (blocks << blkszbits) lies within the verified size. A forged superblock that presents the tree's own
// hash blocks as the data therefore fails (its "data" is digests, not an erofs), and so does a tree that
// covers only part of the file system. root.erofs may be larger than the verified size: systemd-repart's
// Minimize= and partition alignment can leave slack after the file system, which the tree does not cover.
// That slack is accepted but never exposed: Root.DataSize is the verified size, and Mount gives the loop
// device exactly that size limit.
//
// # TOCTOU
//
// Verifying a file and mounting it later lets whoever can write it swap the bytes in between. Measures:
//
//   - The UKI is read into memory once; the same bytes are measured and give the root hash.
//   - root.erofs is opened once (through the image directory, not leaving it) and verified, checked and
//     mounted through that descriptor: renaming or replacing the path afterwards changes nothing.
//   - root.erofs must be a regular file owned by root or the launcher's user and not writable by group or
//     others, so that only an already trusted user could modify the inode in place.
//   - The launcher takes a read lease (F_SETLEASE) on the descriptor before verifying. The kernel grants it
//     only if nobody has the file open for writing (or mapped writable), and breaks it when anyone opens
//     the file for writing or truncates it later. Root.Check, which Launch runs after verification and
//     Mount runs before mounting, requires the lease to be intact and the file's device, inode, size and
//     mtime to be unchanged. Without the lease (the kernel refuses it for a file system without lease
//     support, or for a file the launcher neither owns nor has CAP_LEASE for) only the stat comparison
//     remains, and it includes the ctime, which a writer cannot reset (with the lease the ctime is left
//     out: renaming another file over the path changes the link count and so the ctime of the verified
//     inode, which is harmless since the descriptor is used).
//
// The lease belongs to the open file, which a loop device made by Mount keeps open, so it lasts as long as
// the descriptor or a mount does.
//
// What remains: a writer that is the file's owner or root can still modify it after the mount (its open
// first waits out the lease break, /proc/sys/fs/lease-break-time, 45 s by default), and erofs has no
// integrity of its own: without dm-verity in this kernel nothing checks blocks as they are read. Closing
// that needs dm-verity, or copying the verified bytes into sealed memory (memfd with F_SEAL_WRITE; the root
// is ~440 MB) and mounting that. Reads through the loop device also see the page cache, which only the
// same writers can change.
package launcher
