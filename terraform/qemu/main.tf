provider "libvirt" {
  uri = var.libvirt_uri
}

locals {
  prefix = "${var.name}-${var.uid}"
  # Nodes get only the hash; it may be public, as the secret is random.
  init_secret_hash = nonsensitive(sha256(var.init_secret))

  # As in the local provider: the host (libvirt's bridge) has the network's first address, node i address i+2.
  node_ips = { for name, n in var.nodes : name => cidrhost(var.network_cidr, n.index + 2) }

  # Control planes by index; the first is the cluster endpoint (there is no load balancer).
  control_planes = [
    for key in sort([for name, n in var.nodes : format("%05d/%s", n.index, name) if n.role == "control-plane"]) :
    split("/", key)[1]
  ]
  first_control_plane_ip = local.node_ips[local.control_planes[0]]

  instances = [for name in sort(keys(var.nodes)) : { name = name, role = var.nodes[name].role, ip = local.node_ips[name] }]

  # QEMU passes each node's metadata as a fw_cfg file, /sys/firmware/qemu_fw_cfg/by_name/<name>/raw in the
  # guest (kernel module qemu_fw_cfg). OVMF does not measure it.
  metadata_fw_cfg_name = "opt/constellation/metadata"
}

# An isolated network (no forwarding): the host reaches the nodes, the nodes reach the host and each other,
# and nothing leaves the machine.
resource "libvirt_network" "nodes" {
  name      = local.prefix
  mode      = "none"
  addresses = [var.network_cidr]
  autostart = true
  dhcp {
    enabled = true
  }
  dns {
    enabled    = true
    local_only = true
  }
}

resource "libvirt_pool" "cluster" {
  name = local.prefix
  type = "dir"
  path = "${var.storage_pool_dir}/${local.prefix}"
}

resource "libvirt_volume" "image" {
  name   = "${local.prefix}-image.raw"
  pool   = libvirt_pool.cluster.name
  source = "${var.image}/disk.raw"
  format = "raw"
}

# Copy-on-write boot disk per node on top of the read-only image.
resource "libvirt_volume" "boot" {
  for_each       = var.nodes
  name           = "${local.prefix}-${each.key}-boot.qcow2"
  pool           = libvirt_pool.cluster.name
  base_volume_id = libvirt_volume.image.id
  format         = "qcow2"
}

resource "libvirt_volume" "state" {
  for_each = var.nodes
  name     = "${local.prefix}-${each.key}-state.qcow2"
  pool     = libvirt_pool.cluster.name
  size     = each.value.state_disk_size_gb * 1024 * 1024 * 1024
  format   = "qcow2"
}

# The node's metadata, shaped like the local provider's metadata API (/v1/self, /v1/instances,
# /v1/init-secret-hash, /v1/endpoints). The libvirt provider's ignition volume is the only way it offers to
# hand a guest a fw_cfg file; the content is ours, not an Ignition config.
resource "libvirt_ignition" "metadata" {
  for_each = var.nodes
  name     = "${local.prefix}-${each.key}-metadata.json"
  pool     = libvirt_pool.cluster.name
  content = jsonencode({
    cluster        = var.name
    uid            = var.uid
    self           = { name = each.key, role = each.value.role, ip = local.node_ips[each.key] }
    instances      = local.instances
    initSecretHash = { sha256 = local.init_secret_hash }
    endpoints = {
      controlPlanes = [for name in local.control_planes : local.node_ips[name]]
      kubernetesAPI = "${local.first_control_plane_ip}:6443"
    }
  })

  lifecycle {
    # Adding nodes changes every node's instance list; replacing the volume would replace every domain.
    # A running node keeps the list it booted with.
    ignore_changes = [content]
  }
}

# The trust root of the nodes' attestation keys: the platform (this machine) makes each node's vTPM and
# certifies it with the cluster's CA, instead of libvirt's swtpm_setup, whose certificates chain to nothing
# the admin configured.
resource "constellation_platform_ca" "this" {
  name      = "${local.prefix} qemu platform CA"
  directory = "${var.vtpm_dir}/${local.prefix}"
}

resource "constellation_qemu_vtpm" "node" {
  for_each     = var.nodes
  name         = each.key
  directory    = "${var.vtpm_dir}/${local.prefix}/${each.key}"
  socket       = "${var.vtpm_socket_dir}/${local.prefix}/${each.key}.sock"
  ca_directory = constellation_platform_ca.this.directory
  socket_owner = var.qemu_user
}

resource "libvirt_domain" "node" {
  for_each    = var.nodes
  name        = "${local.prefix}-${each.key}"
  description = "Constellation cluster ${var.name} (${var.uid}): ${each.value.role} ${each.key}"
  type        = var.domain_type
  machine     = "q35"
  vcpu        = var.vcpus
  memory      = var.memory_mib
  firmware    = var.firmware
  autostart   = false

  nvram {
    file     = "${var.nvram_dir}/${local.prefix}-${each.key}_VARS.fd"
    template = var.nvram_template == "" ? null : var.nvram_template
  }

  dynamic "cpu" {
    # TCG keeps libvirt's default CPU model.
    for_each = var.domain_type == "kvm" ? [1] : []
    content {
      mode = "host-passthrough"
    }
  }

  # The vTPM: the node's certified swtpm (constellation_qemu_vtpm), through libvirt's external TPM backend
  # (the libvirt provider has no attribute for it, so the domain XML gets it here).
  xml {
    xslt = <<-EOT
      <?xml version="1.0"?>
      <xsl:stylesheet version="1.0" xmlns:xsl="http://www.w3.org/1999/XSL/Transform">
        <xsl:output omit-xml-declaration="yes" indent="yes"/>
        <xsl:template match="node()|@*">
          <xsl:copy><xsl:apply-templates select="node()|@*"/></xsl:copy>
        </xsl:template>
        <xsl:template match="/domain/devices/tpm"/>
        <xsl:template match="/domain/devices">
          <xsl:copy>
            <xsl:apply-templates select="node()|@*"/>
            <tpm model="tpm-tis">
              <backend type="external" version="2.0">
                <source type="unix" mode="connect" path="${constellation_qemu_vtpm.node[each.key].socket}"/>
              </backend>
            </tpm>
          </xsl:copy>
        </xsl:template>
      </xsl:stylesheet>
    EOT
  }

  coreos_ignition = libvirt_ignition.metadata[each.key].id
  fw_cfg_name     = local.metadata_fw_cfg_name

  # vda: boot disk, vdb: state disk.
  disk {
    volume_id = libvirt_volume.boot[each.key].id
  }
  disk {
    volume_id = libvirt_volume.state[each.key].id
  }

  boot_device {
    dev = ["hd"]
  }

  network_interface {
    network_id     = libvirt_network.nodes.id
    hostname       = each.key
    addresses      = [local.node_ips[each.key]]
    wait_for_lease = false
  }

  console {
    type        = "pty"
    target_type = "serial"
    target_port = "0"
  }

  graphics {
    type           = "vnc"
    listen_type    = "address"
    listen_address = "127.0.0.1"
  }
}
