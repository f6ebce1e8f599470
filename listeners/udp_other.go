//go:build !linux

package listeners

import "net"

// kernelDrops is not known outside Linux.
func kernelDrops(*net.UDPConn) uint64 { return 0 }
