package main

import (
	"testing"

	"github.com/anishathalye/porcupine"
)

func s(v string) *string { return &v }

func op(client int, call, ret int64, in input, out output) porcupine.Operation {
	return porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret}
}

func TestStaleReadIsRejected(t *testing.T) {
	h := []porcupine.Operation{
		op(0, 0, 10, input{kind: "put", key: "k", value: s("a")}, output{}),
		op(1, 20, 30, input{kind: "get", key: "k"}, output{read: nil}),
	}
	if porcupine.CheckOperations(model, h) {
		t.Fatal("a read after an acknowledged put that saw nothing was accepted")
	}
}

func TestUnknownWriteMayHaveApplied(t *testing.T) {
	h := []porcupine.Operation{
		op(0, 0, 1<<62, input{kind: "put", key: "k", value: s("a"), unknown: true}, output{}),
		op(1, 20, 30, input{kind: "get", key: "k"}, output{read: s("a")}),
		op(1, 40, 50, input{kind: "get", key: "k"}, output{read: s("a")}),
	}
	if !porcupine.CheckOperations(model, h) {
		t.Fatal("an unknown write that was read back was refused")
	}
}

func TestCasAndDeleteFollowTheState(t *testing.T) {
	ok := []porcupine.Operation{
		op(0, 0, 10, input{kind: "cas", key: "k", value: s("a")}, output{succeeded: true}),
		op(0, 20, 30, input{kind: "cas", key: "k", expect: s("x"), value: s("b")}, output{succeeded: false, seen: s("a")}),
		op(0, 40, 50, input{kind: "delete", key: "k"}, output{deleted: true}),
		op(0, 60, 70, input{kind: "delete", key: "k"}, output{deleted: false}),
	}
	if !porcupine.CheckOperations(model, ok) {
		t.Fatal("a valid cas/delete history was refused")
	}
	bad := []porcupine.Operation{
		op(0, 0, 10, input{kind: "put", key: "k", value: s("a")}, output{}),
		op(0, 20, 30, input{kind: "cas", key: "k", value: s("b")}, output{succeeded: true}),
	}
	if porcupine.CheckOperations(model, bad) {
		t.Fatal("a swap expecting an absent key succeeded after a put, and was accepted")
	}
}
