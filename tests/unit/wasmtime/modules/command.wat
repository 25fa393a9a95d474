;; A WASI p2 command component: wasi:cli/run.run calls wasi:cli/exit.exit(err),
;; which the host reports as exit code 1 (what a C `return 7` becomes under p2).
(component
  (import "wasi:cli/exit@0.2.0" (instance $exit
    (export "exit" (func (param "status" (result))))))
  (core func $exit (canon lower (func $exit "exit")))
  (core module $m
    (import "host" "exit" (func $exit (param i32)))
    (func (export "run") (result i32) (call $exit (i32.const 1)) (i32.const 0)))
  (core instance $i (instantiate $m (with "host" (instance (export "exit" (func $exit))))))
  (func $run (result (result)) (canon lift (core func $i "run")))
  (instance $run-instance (export "run" (func $run)))
  (export "wasi:cli/run@0.2.0" (instance $run-instance)))
