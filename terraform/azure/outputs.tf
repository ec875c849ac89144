output "cluster_endpoint" {
  value       = azurerm_public_ip.front.ip_address
  description = "Address of the load balancer in front of the control planes."
}

output "in_cluster_endpoint" {
  # Azure's load balancer drops a backend's connection to its own frontend when it would be forwarded to
  # the same backend, so the nodes use the first control plane directly.
  value       = azurerm_network_interface.node[local.control_planes[0]].private_ip_address
  description = "The Kubernetes API endpoint the nodes use: the first control plane's private address."
}

output "api_server_cert_sans" {
  value = sort(distinct(concat(
    [azurerm_public_ip.front.ip_address],
    [for name in local.control_planes : azurerm_public_ip.node[name].ip_address],
    [for name in local.control_planes : azurerm_network_interface.node[name].private_ip_address],
  )))
  description = "Addresses the API server certificate must be valid for."
}

output "ip_cidr_node" {
  value       = var.node_cidr
  description = "The node network (the virtual network)."
}

output "nodes" {
  value = {
    for name, vm in azurerm_linux_virtual_machine.node :
    name => { ip = azurerm_public_ip.node[name].ip_address, role = var.nodes[name].role }
  }
  description = "Nodes by name with their public address (the CLI reaches them there) and role."
}
