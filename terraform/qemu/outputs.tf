output "cluster_endpoint" {
  value       = local.first_control_plane_ip
  description = "The first control plane's address on the libvirt network (there is no load balancer)."
}

output "in_cluster_endpoint" {
  value       = local.first_control_plane_ip
  description = "The Kubernetes API endpoint the nodes use."
}

output "api_server_cert_sans" {
  value       = [for name in local.control_planes : local.node_ips[name]]
  description = "Addresses the API server certificate must be valid for."
}

output "ip_cidr_node" {
  value       = var.network_cidr
  description = "The node network."
}

output "nodes" {
  value       = { for name, d in libvirt_domain.node : name => { ip = local.node_ips[name], role = var.nodes[name].role } }
  description = "Nodes by name with their address and role."
}

output "platform_ca" {
  value       = constellation_platform_ca.this.certificate
  description = "PEM certificate of the CA that certified every node's vTPM, for attestation.platformCA."
}
