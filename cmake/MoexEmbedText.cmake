# moex_embed_text(<out_var> <text_file> <symbol>): compiles a text file (a data table such
# as runtime/model_shapes.ini) into the library as `moex::embedded::<symbol>`, a
# NUL-terminated char array, so an installed binary needs no source tree. Editing the file
# re-runs the configure step. Sets <out_var> to the generated source to add to a target.
function(moex_embed_text out_var src symbol)
  file(READ ${src} MOEX_EMBED_TEXT)
  set(MOEX_EMBED_SYMBOL ${symbol})
  get_filename_component(name ${src} NAME_WE)
  set(out ${CMAKE_CURRENT_BINARY_DIR}/${name}_embedded.cc)
  configure_file(${PROJECT_SOURCE_DIR}/cmake/embed_text.cc.in ${out} @ONLY)
  set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS ${src})
  set(${out_var} ${out} PARENT_SCOPE)
endfunction()
