;; A component that is not a command: it only exports `thunk: func()` (runwasi's
;; simple_component), run with args[0] = "thunk.wat#thunk".
(component
  (core module $m (func (export "thunk")))
  (core instance $i (instantiate $m))
  (func (export "thunk") (canon lift (core func $i "thunk"))))
