// Command loopcheck proves the guest's loopback network, which the
// full-stack test's server, agent and CLI talk over: it listens on
// 127.0.0.1, connects to itself, echoes a line and prints "loopback ok".
package main

import (
	"bufio"
	"fmt"
	"net"
	"os"
)

func main() {
	if err := check(); err != nil {
		fmt.Println("loopback:", err)
		os.Exit(1)
	}
	fmt.Println("loopback ok")
}

func check() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		line, _ := bufio.NewReader(c).ReadString('\n')
		c.Write([]byte(line))
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.Write([]byte("ping\n")); err != nil {
		return err
	}
	got, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return err
	}
	if got != "ping\n" {
		return fmt.Errorf("echo %q", got)
	}
	return nil
}
