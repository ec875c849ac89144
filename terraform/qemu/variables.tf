variable "name" {
  type        = string
  description = "Cluster name; every resource name starts with <name>-<uid>."
}

variable "uid" {
  type        = string
  description = "Unique ID of this cluster's resources."
  validation {
    condition     = can(regex("^[a-z0-9]{1,16}$", var.uid))
    error_message = "The uid must be 1 to 16 lower-case letters and digits."
  }
}

variable "init_secret" {
  type        = string
  sensitive   = true
  description = "Hex init secret that `constellation apply` shows the first control plane; nodes get only the SHA-256 of this string."
}

variable "image" {
  type        = string
  description = "Absolute path of the node image directory; its disk.raw is the base of every node's boot disk."
}

variable "libvirt_uri" {
  type        = string
  description = "libvirt connection URI, e.g. qemu:///system."
}

variable "firmware" {
  type        = string
  description = "Path of the OVMF firmware code image on the libvirt host."
}

variable "nvram_template" {
  type        = string
  default     = ""
  description = "OVMF variable store template copied into each node's NVRAM; empty lets libvirt pick the one matching the firmware."
}

variable "domain_type" {
  type        = string
  description = "libvirt domain type: kvm (hardware virtualization) or qemu (TCG software emulation)."
  validation {
    condition     = contains(["kvm", "qemu"], var.domain_type)
    error_message = "The domain_type must be kvm or qemu."
  }
}

variable "vcpus" {
  type        = number
  description = "Virtual CPUs per node."
}

variable "memory_mib" {
  type        = number
  description = "Memory per node in MiB."
}

variable "network_cidr" {
  type        = string
  default     = "10.42.1.0/24"
  description = "IPv4 prefix of the isolated libvirt network; the host gets its first address, node i address i+2."
}

variable "storage_pool_dir" {
  type        = string
  default     = "/var/lib/libvirt/images"
  description = "Directory on the libvirt host below which the cluster's storage pool directory is created."
}

variable "nvram_dir" {
  type        = string
  default     = "/var/lib/libvirt/qemu/nvram"
  description = "Directory on the libvirt host for the nodes' NVRAM files."
}

variable "vtpm_dir" {
  type        = string
  default     = "/var/lib/constellation/qemu"
  description = "Directory on the libvirt host below which the cluster's platform CA and the nodes' vTPMs are kept."
}

variable "vtpm_socket_dir" {
  type        = string
  default     = "/run/constellation/qemu"
  description = "Directory on the libvirt host below which the nodes' vTPM control sockets are made (0711: QEMU's user passes)."
}

variable "qemu_user" {
  type        = string
  default     = "libvirt-qemu"
  description = "The user libvirt runs QEMU as (user in qemu.conf); only it may connect to a node's vTPM."
}

variable "nodes" {
  type = map(object({
    role               = string
    group              = string
    index              = number
    state_disk_size_gb = number
    instance_type      = string
    zone               = string
  }))
  description = "Nodes by name."
  validation {
    condition     = length([for n in values(var.nodes) : n if n.role == "control-plane"]) > 0
    error_message = "At least one node must have the role control-plane."
  }
}
