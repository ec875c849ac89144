resource "constellation_local_network" "this" {
  name               = var.name
  bridge_cidr        = var.bridge_cidr
  kubernetes_version = var.kubernetes_version
  services_dir       = var.services_dir
  init_secret        = var.init_secret
  local_kms          = var.local_kms
}

# A node runs its own image if it has one (a roll-out by `constellation apply` moves nodes one at a time),
# else the module's.
resource "constellation_local_node" "node" {
  for_each           = var.nodes
  network            = constellation_local_network.this.id
  name               = each.key
  role               = each.value.role
  index              = each.value.index
  image_dir          = coalesce(each.value.image, var.image)
  state_disk_size_gb = each.value.state_disk_size_gb
}

locals {
  control_planes = sort([for name, n in var.nodes : name if n.role == "control-plane"])
  first_ip       = constellation_local_node.node[local.control_planes[0]].ip
}
