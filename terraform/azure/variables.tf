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
  description = "Hex init secret that `constellation apply` shows the first control plane; nodes get only the SHA-256 of this string (tag init-secret-hash)."
}

variable "image" {
  type        = string
  description = "Resource ID of the node image version (shared image gallery), which must support confidential VMs."
}

variable "subscription_id" {
  type        = string
  description = "Azure subscription ID."
}

variable "tenant_id" {
  type        = string
  description = "Azure tenant ID."
}

variable "location" {
  type        = string
  description = "Azure location with confidential VMs, e.g. westeurope."
}

variable "resource_group" {
  type        = string
  description = "Name of the existing resource group that receives the cluster's resources."
}

variable "user_assigned_identity" {
  type        = string
  description = "Resource ID of the user-assigned identity the nodes use."
}

variable "node_cidr" {
  type        = string
  default     = "192.168.176.0/20"
  description = "IPv4 prefix of the cluster's virtual network and node subnet."
}

variable "secure_boot" {
  type        = bool
  default     = false
  description = "Enable UEFI Secure Boot; only for images whose boot chain is signed by a key the VM's firmware trusts. Measured boot does not need it."
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
  description = "Nodes by name; zone is an availability zone number (1, 2 or 3), instance_type a confidential VM size (DCasv5/ECasv5)."
  validation {
    condition     = length([for n in values(var.nodes) : n if n.role == "control-plane"]) > 0
    error_message = "At least one node must have the role control-plane."
  }
}
